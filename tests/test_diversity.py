"""DiversityPolicy and netgroup(): parsing, the properties of the order, and the manager.

The order is checked as a pure function over random candidate sets (Hypothesis), then with
a real `ConnManager` on both backends: manager-protected peers are never closed, the count
reaches low water, and a flood from two /16s is trimmed before honest peers from many.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import logging
import random
from collections.abc import Hashable, Mapping, Sequence

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from asyncconnmgr import (
    UNKNOWN_GROUP,
    CandidateConn,
    ConnManager,
    DefaultPolicy,
    Direction,
    DiversityPolicy,
    DiversityReason,
    TrimPolicy,
    default_key,
    netgroup,
)
from asyncconnmgr.abc import Conn, Notifiee
from asyncconnmgr.testing import FakeClock, FakeConn, settle

# --- netgroup ---------------------------------------------------------------------------------

PARSED = [
    ("/ip4/203.0.113.7/tcp/4001", "ip4:203.0.0.0/16"),
    ("/ip4/203.0.113.7/udp/4001/quic-v1/p2p/QmPeer", "ip4:203.0.0.0/16"),
    ("/ip6/2001:db8:aa::1/tcp/4001", "ip6:2001:db8::/32"),
    ("/ip6zone/eth0/ip6/fe80::1/tcp/1", "ip6:fe80::/32"),
    ("/dns/Example.COM/tcp/443", "dns:example.com"),
    ("/dns4/node.example.org./tcp/1", "dns:node.example.org"),
    ("/dns6/v6.example.net/tcp/1", "dns:v6.example.net"),
    ("/dnsaddr/bootstrap.libp2p.io", "dns:bootstrap.libp2p.io"),
    ("198.51.100.20:4001", "ip4:198.51.0.0/16"),
    ("198.51.100.20", "ip4:198.51.0.0/16"),
    ("  198.51.100.20  ", "ip4:198.51.0.0/16"),
    ("[2001:db8:1:2::3]:443", "ip6:2001:db8::/32"),
    ("[2001:db8:1:2::3]", "ip6:2001:db8::/32"),
    ("2001:db8:ffff::1", "ip6:2001:db8::/32"),
    ("fe80::1%eth0", "ip6:fe80::/32"),
    ("example.com:443", "dns:example.com"),
    ("localhost:8080", "dns:localhost"),
    ("example.com", "dns:example.com"),
    (ipaddress.ip_address("192.0.2.1"), "ip4:192.0.0.0/16"),
    (ipaddress.ip_address("2001:db8::1"), "ip6:2001:db8::/32"),
    # IPv6 addresses that carry an IPv4 one are that IPv4 address.
    ("::ffff:198.51.100.20", "ip4:198.51.0.0/16"),
    ("/ip6/::ffff:198.51.100.20/tcp/1", "ip4:198.51.0.0/16"),
    ("64:ff9b::c633:6414", "ip4:198.51.0.0/16"),  # NAT64
    ("2002:c633:6414::1", "ip4:198.51.0.0/16"),  # 6to4
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "ip4:192.0.0.0/16"),  # Teredo: client 192.0.2.45
    # Private and loopback blocks are blocks like any other.
    ("10.1.2.3:1", "ip4:10.1.0.0/16"),
    ("127.0.0.1:1", "ip4:127.0.0.0/16"),
]

UNKNOWN = [
    None,
    "",
    "   ",
    "garbage",
    "1.2.3",
    "999.1.1.1",
    "01.2.3.4",
    "1.2.3.4:",
    "1.2.3.4:99999",
    "1.2.3.4:http",
    "[1.2.3.4]:80",
    "[2001:db8::1",
    "[2001:db8::1]x",
    "/ip4/not-an-ip/tcp/1",
    "/ip4/2001:db8::1/tcp/1",
    "/ip6/1.2.3.4/tcp/1",
    "/ip4",
    "/",
    "/unix/tmp/socket",
    "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234",
    "/dns/-bad-.example/tcp/1",
    "exa mple.com",
    "a" * 300 + ".com",
    b"1.2.3.4",
    3,
    1.5,
    object(),
    ["1.2.3.4"],
]


@pytest.mark.parametrize(("addr", "group"), PARSED)
def test_netgroup_parses_multiaddrs_host_port_and_bare_addresses(addr: object, group: str) -> None:
    assert netgroup(addr) == group


@pytest.mark.parametrize("addr", UNKNOWN)
def test_an_address_netgroup_cannot_read_is_the_unknown_group(addr: object) -> None:
    assert netgroup(addr) == UNKNOWN_GROUP == "unknown"


def test_netgroup_prefixes_are_settings() -> None:
    assert netgroup("198.51.100.20:1", ipv4_prefix=24) == "ip4:198.51.100.0/24"
    assert netgroup("198.51.100.20:1", ipv4_prefix=0) == "ip4:0.0.0.0/0"
    assert netgroup("2001:db8:1:2::3", ipv6_prefix=48) == "ip6:2001:db8:1::/48"
    assert netgroup("2001:db8:1:2::3", ipv6_prefix=128) == "ip6:2001:db8:1:2::3/128"


def test_netgroup_groups_by_autonomous_system_through_the_asmap_hook() -> None:
    seen: list[object] = []

    def asmap(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
        seen.append(address)
        return 64496 if address in ipaddress.ip_network("198.51.0.0/16") else None

    assert netgroup("/ip4/198.51.100.20/tcp/1", asmap=asmap) == "as:64496"
    # The hook sees the IPv4 address an IPv6 one carries.
    assert netgroup("::ffff:198.51.1.1", asmap=asmap) == "as:64496"
    assert seen[-1] == ipaddress.ip_address("198.51.1.1")
    # None (unknown to the map) falls back to the block; names and garbage never reach it.
    assert netgroup("203.0.113.1", asmap=asmap) == "ip4:203.0.0.0/16"
    calls = len(seen)
    assert netgroup("/dns/example.com/tcp/1", asmap=asmap) == "dns:example.com"
    assert netgroup("garbage", asmap=asmap) == "unknown"
    assert len(seen) == calls


def test_an_asmap_that_raises_reaches_a_direct_caller_of_netgroup() -> None:
    def asmap(address: object) -> int:
        raise LookupError("no table")

    with pytest.raises(LookupError, match="no table"):
        netgroup("198.51.100.20", asmap=asmap)


@given(st.text(max_size=60))
def test_netgroup_never_raises_on_any_text(text: str) -> None:
    group = netgroup(text)
    assert group == "unknown" or group.split(":", 1)[0] in {"ip4", "ip6", "dns"}


MULTIADDR_PARTS = st.sampled_from(
    ["ip4", "ip6", "dns", "dns4", "tcp", "udp", "p2p", "ip6zone", "1.2.3.4", "::1", "x", ""]
)


@given(st.lists(MULTIADDR_PARTS, max_size=6))
def test_netgroup_never_raises_on_multiaddr_like_text(parts: list[str]) -> None:
    assert isinstance(netgroup("/" + "/".join(parts)), str)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"asmap": 5}, TypeError, "asmap"),
        ({"ipv4_prefix": "16"}, TypeError, "ipv4_prefix"),
        ({"ipv4_prefix": True}, TypeError, "ipv4_prefix"),
        ({"ipv4_prefix": 33}, ValueError, "ipv4_prefix"),
        ({"ipv4_prefix": -1}, ValueError, "ipv4_prefix"),
        ({"ipv6_prefix": 16.0}, TypeError, "ipv6_prefix"),
        ({"ipv6_prefix": 129}, ValueError, "ipv6_prefix"),
    ],
)
def test_netgroup_rejects_bad_settings_naming_them(
    kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        netgroup("1.2.3.4", **kwargs)  # type: ignore[arg-type]


# --- the policy's settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"secret": "key"}, TypeError, "secret"),
        ({"secret": bytearray(b"key")}, TypeError, "secret"),
        ({"secret": b""}, ValueError, "secret"),
        ({"asmap": "table"}, TypeError, "asmap"),
        ({"ipv4_prefix": 40}, ValueError, "ipv4_prefix"),
        ({"ipv6_prefix": None}, TypeError, "ipv6_prefix"),
        ({"protect_outbound": "0.3"}, TypeError, "protect_outbound"),
        ({"protect_outbound": 1.5}, ValueError, "protect_outbound"),
        ({"protect_outbound": float("nan")}, ValueError, "protect_outbound"),
        ({"protect_keyed": 4.0}, TypeError, "protect_keyed"),
        ({"protect_keyed": -1}, ValueError, "protect_keyed"),
        ({"protect_keyed": False}, TypeError, "protect_keyed"),
        ({"protect_top": -2}, ValueError, "protect_top"),
        ({"protect_top": None}, TypeError, "protect_top"),
        ({"protect_tenure": -0.1}, ValueError, "protect_tenure"),
        ({"protect_tenure": True}, TypeError, "protect_tenure"),
    ],
)
def test_policy_rejects_bad_settings_naming_them(
    kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        DiversityPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_repr_shows_the_settings_but_never_the_secret() -> None:
    secret = b"\xaa\xbb-very-secret"
    text = repr(DiversityPolicy(secret=secret, protect_keyed=2))
    assert "protect_keyed=2" in text
    assert "protect_tenure=0.25" in text
    assert secret.hex() not in text
    assert repr(secret) not in text


# --- candidate snapshots ----------------------------------------------------------------------


@attrs.frozen(eq=False)
class Snap:
    """A trim candidate as the table hands it out (implements `Candidate`)."""

    peer: Hashable
    value: int
    first_seen: float
    connections: tuple[CandidateConn, ...]
    streams: int
    outbound: int
    seq: int

    @property
    def conns(self) -> Mapping[Conn, float]:
        return {c.conn: c.opened for c in self.connections}

    @property
    def open_conns(self) -> int:
        return len(self.connections)


def snap(
    seq: int,
    addrs: Sequence[str | None],
    *,
    value: int = 0,
    first_seen: float = 0.0,
    outbound: int = 0,
    streams: int = 0,
) -> Snap:
    ways = [Direction.OUTBOUND] * outbound + [Direction.INBOUND] * (len(addrs) - outbound)
    conns = tuple(
        CandidateConn(FakeConn(f"p{seq}", way, 0, addr), way, 0, addr, first_seen + at)
        for at, (way, addr) in enumerate(zip(ways, addrs, strict=True))
    )
    return Snap(f"p{seq}", value, first_seen, conns, streams, outbound, seq)


BLOCKS = [f"{a}.{b}" for a, b in [(198, 51), (203, 0), (192, 0), (100, 64), (45, 9), (8, 8)]]
ADDRESSES = st.one_of(
    st.builds(
        lambda block, host: f"{block}.{host}.1:4001", st.sampled_from(BLOCKS), st.integers(0, 9)
    ),
    st.builds(lambda block: f"/ip4/{block}.7.7/tcp/1", st.sampled_from(BLOCKS)),
    st.sampled_from(["[2001:db8::1]:1", "/ip6/2001:db9::2/tcp/1", "/dns4/a.example/tcp/1"]),
    st.none(),
    st.text(max_size=12),
)


@st.composite
def candidate_sets(draw: st.DrawFn, max_size: int = 24) -> list[Snap]:
    size = draw(st.integers(0, max_size))
    found: list[Snap] = []
    for seq in range(size):
        count = draw(st.integers(1, 3))
        found.append(
            snap(
                seq,
                draw(st.lists(ADDRESSES, min_size=count, max_size=count)),
                value=draw(st.integers(-5, 30)),
                first_seen=draw(st.integers(0, 20)),
                outbound=draw(st.integers(0, count)),
                streams=draw(st.integers(0, 3)),
            )
        )
    return found


def select(
    policy: TrimPolicy, candidates: Sequence[Snap], target: int, now: float = 0.0
) -> list[Snap]:
    """The policy's closing order, as the snapshots it was given."""
    given = {id(c): c for c in candidates}
    return [given[id(victim)] for victim in policy.select(candidates, target, now)]


def why(policy: DiversityPolicy, victim: Snap) -> DiversityReason:
    """The reason of a victim of the policy's latest trim."""
    reason = policy.reason(victim)
    assert reason is not None
    return reason


POLICY_SETTINGS = settings(max_examples=300, deadline=None)


def policies() -> st.SearchStrategy[DiversityPolicy]:
    return st.builds(
        DiversityPolicy,
        secret=st.binary(min_size=1, max_size=80),
        protect_outbound=st.sampled_from([0.0, 0.3, 1.0]),
        protect_keyed=st.integers(0, 6),
        protect_top=st.integers(0, 6),
        protect_tenure=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    )


# --- properties of the order ------------------------------------------------------------------


@POLICY_SETTINGS
@given(policy=policies(), candidates=candidate_sets(), target=st.integers(-2, 60))
def test_select_returns_given_candidates_once_each_and_the_shortest_covering_prefix(
    policy: DiversityPolicy, candidates: list[Snap], target: int
) -> None:
    returned = list(policy.select(candidates, target, 100.0))
    ids = [id(c) for c in returned]
    assert len(set(ids)) == len(ids)
    assert set(ids) <= {id(c) for c in candidates}
    order = select(policy, candidates, target, 100.0)
    assert [id(c) for c in order] == ids
    covered = sum(c.open_conns for c in order)
    total = sum(c.open_conns for c in candidates)
    if target <= 0:
        assert order == []
    elif total < target:
        assert len(order) == len(candidates)  # every one, and still short
    else:
        assert covered >= target
        assert covered - order[-1].open_conns < target  # no victim more than needed


@POLICY_SETTINGS
@given(
    secret=st.binary(min_size=1, max_size=64),
    candidates=candidate_sets(),
    target=st.integers(1, 60),
    seed=st.integers(0, 1000),
)
def test_select_is_deterministic_for_a_secret_whatever_the_input_order(
    secret: bytes, candidates: list[Snap], target: int, seed: int
) -> None:
    shuffled = list(candidates)
    random.Random(seed).shuffle(shuffled)
    first = [c.seq for c in select(DiversityPolicy(secret=secret), candidates, target, 5.0)]
    again = [c.seq for c in select(DiversityPolicy(secret=secret), shuffled, target, 5.0)]
    assert first == again


@POLICY_SETTINGS
@given(policy=policies(), candidates=candidate_sets(), target=st.integers(1, 60))
def test_protected_by_policy_close_only_once_the_unprotected_cannot_cover_the_target(
    policy: DiversityPolicy, candidates: list[Snap], target: int
) -> None:
    order = select(policy, candidates, target, 0.0)
    reasons = [policy.reason(c) for c in order]
    assert all(isinstance(r, DiversityReason) for r in reasons)
    flags = [r is not None and r.protected_by is not None for r in reasons]
    assert flags == sorted(flags)  # the unprotected all come first
    if any(flags):
        unprotected = sum(c.open_conns for c, f in zip(order, flags, strict=True) if not f)
        assert unprotected < target
    chosen = {id(c) for c in order}
    assert all(policy.reason(c) is None for c in candidates if id(c) not in chosen)


@POLICY_SETTINGS
@given(
    secret=st.binary(min_size=1, max_size=8), candidates=candidate_sets(), target=st.integers(1, 60)
)
def test_victims_come_from_the_most_represented_group_in_the_default_order_within_it(
    secret: bytes, candidates: list[Snap], target: int
) -> None:
    policy = DiversityPolicy(
        secret=secret, protect_outbound=0, protect_keyed=0, protect_top=0, protect_tenure=0
    )
    order = select(policy, candidates, target, 0.0)
    group = {id(c): policy.netgroup_of(c) for c in candidates}
    sizes: dict[str, int] = {}
    for c in candidates:
        sizes[group[id(c)]] = sizes.get(group[id(c)], 0) + c.open_conns
    left = {id(c): c for c in candidates}
    for victim in order:
        reason = policy.reason(victim)
        assert reason is not None
        mine = group[id(victim)]
        assert reason == DiversityReason(mine, sizes[mine], None, default_key(victim))
        for rival in left.values():
            theirs = group[id(rival)]
            assert sizes[theirs] <= sizes[mine]
            if rival is not victim and (theirs == mine or sizes[theirs] == sizes[mine]):
                # Inside a group, and between groups as large, the default order decides.
                assert default_key(rival) > default_key(victim)
        sizes[mine] -= victim.open_conns
        del left[id(victim)]


@settings(max_examples=50, deadline=None)
@given(secrets=st.lists(st.binary(min_size=1, max_size=64), min_size=8, max_size=8, unique=True))
def test_which_group_the_keyed_protection_keeps_depends_on_the_secret(
    secrets: list[bytes],
) -> None:
    # Sixteen peers alike but for their /16; the trim keeps one: the keyed protection's.
    candidates = [snap(i, [f"{10 + i}.1.2.3:1"], value=1) for i in range(16)]
    kept = []
    for secret in secrets:
        policy = DiversityPolicy(
            secret=secret, protect_keyed=1, protect_outbound=0, protect_top=0, protect_tenure=0
        )
        order = select(policy, candidates, 15, 0.0)
        (survivor,) = [c for c in candidates if c not in order]
        again = DiversityPolicy(
            secret=secret, protect_keyed=1, protect_outbound=0, protect_top=0, protect_tenure=0
        )
        assert [c for c in candidates if c not in select(again, candidates, 15, 0.0)] == [survivor]
        # It is the group whose hash keyed by the secret is the highest.
        label = policy.netgroup_of(survivor)
        digests = {
            policy.netgroup_of(c): hashlib.blake2b(
                policy.netgroup_of(c).encode(), key=secret, digest_size=8
            ).digest()
            for c in candidates
        }
        assert digests[label] == max(digests.values())
        kept.append(survivor.seq)
    assert len(set(kept)) > 1


def test_an_idle_peer_is_never_kept_for_its_keyed_group() -> None:
    # Sixteen idle peers alike but for their /16: whatever the secret, the one kept is the
    # last in the default order (the oldest entry), not a keyed group's.
    candidates = [snap(i, [f"{10 + i}.1.2.3:1"]) for i in range(16)]
    for secret in (b"a", b"b", b"c", b"d"):
        policy = DiversityPolicy(
            secret=secret, protect_keyed=1, protect_outbound=0, protect_top=0, protect_tenure=0
        )
        order = select(policy, candidates, 15)
        assert [c.seq for c in candidates if c not in order] == [0]


def test_a_group_is_the_group_of_the_peers_oldest_readable_connection() -> None:
    policy = DiversityPolicy(secret=b"k")
    conns = tuple(
        CandidateConn(FakeConn("p", remote_addr=addr), Direction.INBOUND, 0, addr, opened)
        for addr, opened in [("198.51.1.1:1", 5.0), ("garbage", 1.0), ("/ip4/203.0.1.1/tcp/1", 2.0)]
    )
    peer = Snap("p", 0, 0.0, conns, 0, 0, 1)
    assert policy.netgroup_of(peer) == "ip4:203.0.0.0/16"
    assert policy.netgroup_of(snap(2, [None, "x"])) == "unknown"


def test_a_flood_group_is_thinned_before_any_peer_of_a_rare_group() -> None:
    honest = [snap(i, [f"{20 + i}.9.0.1:1"], value=1, first_seen=50) for i in range(10)]
    # Attackers: older and worth more than the honest peers, but from two /16s.
    attackers = [
        snap(100 + i, [f"{(1, 2)[i % 2]}.2.{i}.1:1"], value=5, first_seen=0) for i in range(20)
    ]
    quiet = DiversityPolicy(protect_outbound=0, protect_keyed=0, protect_top=0, protect_tenure=0)
    order = select(quiet, honest + attackers, 18, 0.0)
    # Down to one peer in each attacker group, as many as in each honest one.
    assert {c.seq for c in order} < {c.seq for c in attackers}
    assert len(order) == 18
    # Alternately from each group (the larger first), the default order inside a group.
    groups = [quiet.netgroup_of(c) for c in order]
    assert all(a != b for a, b in itertools.pairwise(groups))
    # The reference order closes the honest peers first: they are worth less and younger.
    reference = select(DefaultPolicy(), honest + attackers, 18)
    assert {c.seq for c in reference[:10]} == {c.seq for c in honest}


def test_outbound_only_peers_are_reserved_a_share_of_what_the_trim_keeps() -> None:
    dialled = [snap(i, ["203.0.1.1:1"], outbound=1, first_seen=10) for i in range(6)]
    mixed = [snap(10 + i, ["203.0.1.1:1", "203.0.1.2:1"], outbound=1) for i in range(2)]
    inbound = [snap(20 + i, [f"{30 + i}.1.1.1:1"], value=50) for i in range(10)]
    everyone = dialled + mixed + inbound
    policy = DiversityPolicy(protect_keyed=0, protect_top=0, protect_tenure=0)
    # 20 connections, 10 kept: 3 (30%) for outbound-only peers, although they are all in the
    # largest group and worth the least.
    order = select(policy, everyone, 10, 0.0)
    kept = [c for c in everyone if c not in order]
    assert sum(1 for c in kept if c in dialled) == 3
    assert all(why(policy, c).protected_by is None for c in order)
    # Peers with an inbound connection are not outbound-only: none is reserved.
    assert not any(c in mixed for c in kept)


def test_the_most_valuable_peer_of_a_large_group_is_kept() -> None:
    # An honest, valuable peer shares its /16 with a flood of attackers.
    neighbour = snap(0, ["198.51.7.7:1"], value=40, first_seen=90)
    flood = [snap(1 + i, [f"198.51.{i}.9:1"], value=1, first_seen=80) for i in range(30)]
    rare = [snap(100 + i, [f"{60 + i}.3.3.3:1"], value=50, first_seen=90) for i in range(5)]
    everyone = [neighbour, *flood, *rare]
    policy = DiversityPolicy(protect_keyed=0, protect_tenure=0)
    order = select(policy, everyone, len(flood) + 1, 0.0)
    assert neighbour not in order
    assert policy.reason(neighbour) is None
    without = DiversityPolicy(protect_keyed=0, protect_tenure=0, protect_top=0)
    assert neighbour in select(without, everyone, len(flood) + 1, 0.0)


def test_tenure_is_protected_one_group_at_a_time() -> None:
    # Early attackers from one /16 and later honest peers, one /16 each, all alike.
    early = [snap(i, [f"1.2.{i}.1:1"], value=1, first_seen=i) for i in range(10)]
    late = [snap(10 + i, [f"{40 + i}.1.1.1:1"], value=1, first_seen=100 + i) for i in range(10)]
    policy = DiversityPolicy(protect_outbound=0, protect_keyed=0, protect_top=0, protect_tenure=0.5)
    order = select(policy, early + late, 10, 0.0)
    kept = [c for c in early + late if c not in order]
    # Half of the candidates by tenure, the oldest of each group per round: one early peer
    # and every late one but the youngest; the rest of the early group is closed first.
    assert sorted(c.seq for c in kept) == [0, *range(10, 19)]
    reasons = {why(policy, c).protected_by for c in order}
    assert reasons == {None}


@pytest.mark.parametrize(("old_value", "closed"), [(0, "old"), (1, "young")])
def test_tenure_protects_only_peers_with_a_positive_value(old_value: int, closed: str) -> None:
    # Ten old peers and ten young ones, each in a /16 of its own; the young are worth 1.
    old = [snap(i, [f"{10 + i}.1.1.1:1"], value=old_value, first_seen=i) for i in range(10)]
    young = [snap(10 + i, [f"{40 + i}.1.1.1:1"], value=1, first_seen=100 + i) for i in range(10)]
    policy = DiversityPolicy(protect_outbound=0, protect_keyed=0, protect_top=0, protect_tenure=1.0)
    order = select(policy, old + young, 10, 0.0)
    # Idle old peers proved only patience: the tenure protection goes to the young, and the
    # old are closed. Old peers worth as much are kept for their tenure.
    assert {c.seq for c in order} == {c.seq for c in (old if closed == "old" else young)}


def test_an_asmap_that_raises_never_stops_select(caplog: pytest.LogCaptureFixture) -> None:
    def asmap(address: object) -> int:
        raise LookupError("broken table")

    policy = DiversityPolicy(secret=b"k", asmap=asmap)
    candidates = [snap(i, [f"{i}.1.1.1:1"]) for i in range(1, 6)]
    with caplog.at_level(logging.WARNING, logger="asyncconnmgr"):
        order = select(policy, candidates, 2, 0.0)
        select(policy, candidates, 2, 1.0)
    assert len(order) == 2
    assert policy.netgroup_of(candidates[0]) == "ip4:1.1.0.0/16"
    assert sum("ASN map raised" in r.getMessage() for r in caplog.records) == 1


def test_asmap_groups_peers_of_one_autonomous_system_together() -> None:
    def asmap(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
        return (
            64500
            if isinstance(address, ipaddress.IPv4Address) and int(address) >> 24 < 50
            else None
        )

    policy = DiversityPolicy(
        asmap=asmap, protect_outbound=0, protect_keyed=0, protect_top=0, protect_tenure=0
    )
    # Ten peers from ten /16s of one provider, ten from ten /16s elsewhere.
    cloud = [snap(i, [f"{10 + i}.0.0.1:1"], value=9) for i in range(10)]
    spread = [snap(20 + i, [f"{100 + i}.0.0.1:1"]) for i in range(10)]
    order = select(policy, cloud + spread, 9, 0.0)
    assert {c.seq for c in order} <= {c.seq for c in cloud}
    assert policy.reason(order[0]) is not None
    assert why(policy, order[0]).netgroup == "as:64500"


def test_reasons_stay_for_every_select_of_one_trim_and_go_with_the_next() -> None:
    policy = DiversityPolicy(secret=b"k")
    first = [snap(i, [f"{i}.1.1.1:1"]) for i in range(1, 5)]
    second = [snap(10 + i, [f"{i}.1.1.1:1"]) for i in range(1, 5)]
    a = select(policy, first, 1, 7.0)
    b = select(policy, second, 1, 7.0)  # the same trim: its peers in grace
    assert policy.reason(a[0]) is not None
    assert policy.reason(b[0]) is not None
    select(policy, second, 1, 8.0)
    assert policy.reason(a[0]) is None


# --- with a real ConnManager ------------------------------------------------------------------

GRACE = 10.0

MANAGER_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@attrs.frozen
class Table:
    peers: list[tuple[list[str | None], Direction, int, int, bool]]
    low: int
    secret: bytes


@st.composite
def tables(draw: st.DrawFn) -> Table:
    peers = []
    for _ in range(draw(st.integers(1, 40))):
        count = draw(st.integers(1, 3))
        peers.append(
            (
                draw(st.lists(ADDRESSES, min_size=count, max_size=count)),
                draw(st.sampled_from([Direction.INBOUND, Direction.OUTBOUND])),
                draw(st.integers(0, 2)),  # streams
                draw(st.integers(-5, 30)),  # value
                draw(st.booleans()),  # protected by the host
            )
        )
    total = sum(len(p[0]) for p in peers)
    return Table(peers, draw(st.integers(0, total)), draw(st.binary(min_size=1, max_size=8)))


@pytest.mark.anyio
@MANAGER_SETTINGS
@given(table=tables())
async def test_with_a_manager_protected_peers_stay_and_the_count_goes_to_low_water(
    table: Table,
) -> None:
    clock = FakeClock(start=1_000)
    policy = DiversityPolicy(secret=table.secret)
    manager = ConnManager(
        low_water=table.low,
        high_water=max(table.low, 1) * 10,
        grace_period=GRACE,
        clock=clock,
        policy=policy,
    )
    async with manager:
        notifiee = manager.notifee()
        conns: dict[str, list[FakeConn]] = {}
        for at, (addrs, way, streams, value, protected) in enumerate(table.peers):
            peer = f"p{at}"
            conns[peer] = [FakeConn(peer, way, streams, addr, notifiee=notifiee) for addr in addrs]
            for conn in conns[peer]:
                notifiee.connected(conn)
            manager.tag_peer(peer, "use", value)
            if protected:
                manager.protect(peer, "host")
        await manager.flush()
        await settle()
        clock.advance(GRACE + 1)  # the background trimmer may run now too
        await settle()
        result = await manager.trim_open_conns()
        await settle()
        open_left = {p: [c for c in cs if not c.closed] for p, cs in conns.items()}
        eligible = [
            (p, cs) for (p, cs), spec in zip(conns.items(), table.peers, strict=True) if not spec[4]
        ]
        before = sum(len(cs) for _, cs in eligible)
        after = sum(len(open_left[p]) for p, _ in eligible)
        for (peer, cs), spec in zip(conns.items(), table.peers, strict=True):
            if spec[4]:
                assert all(c.close_calls == 0 for c in cs), peer
        if before <= table.low:
            assert after == before
        else:
            assert after <= table.low
            # Whole peers are closed, no more than needed: the last victim crossed low water.
            assert after > table.low - max(len(cs) for _, cs in eligible)
        assert manager.get_info().conn_count == sum(len(cs) for cs in open_left.values())
        for victim in result.victims:
            assert isinstance(victim.reason, DiversityReason)


async def run_flood(policy: object) -> tuple[int, int, int]:
    """Honest peers from 28 /16s, then waves of attackers from two /16s that look like them
    (the same values, streams and direction), a wave every grace period and a half. Returns
    the fewest honest peers connected at any moment, the honest /16s kept at the end, and
    the attackers connected at the end."""
    rng = random.Random(7)
    clock = FakeClock(start=0)
    manager = ConnManager(
        low_water=20,
        high_water=30,
        grace_period=3.0,
        silence_period=1.0,
        clock=clock,
        policy=policy,
    )
    honest: list[FakeConn] = []
    attackers: list[FakeConn] = []
    fewest = 10**9

    async def tick(seconds: float) -> None:
        nonlocal fewest
        await manager.flush()
        await settle()
        clock.advance(seconds)
        await manager.flush()
        await settle()
        fewest = min(fewest, sum(1 for c in honest if not c.closed))
        assert manager.get_info().conn_count <= 35  # the ceiling of the bounded count

    async with manager:
        notifiee = manager.notifee()
        for i in range(28):
            peer = f"honest{i}"
            way = Direction.OUTBOUND if i % 4 == 0 else Direction.INBOUND
            honest.append(FakeConn(peer, way, i % 2, f"/ip4/{30 + i}.7.0.1/tcp/4001", notifiee))
            notifiee.connected(honest[-1])
            manager.tag_peer(peer, "use", rng.randint(0, 20))
        await tick(5.0)
        for wave in range(8):
            for i in range(50):
                peer = f"attacker{wave}.{i}"
                addr = f"/ip4/6.{i % 2}.{wave}.{i}/tcp/1"
                attackers.append(FakeConn(peer, Direction.INBOUND, i % 2, addr, notifiee))
                notifiee.connected(attackers[-1])
                manager.tag_peer(peer, "use", rng.randint(0, 20))
            for _ in range(18):
                await tick(0.25)
        groups = {netgroup(c.remote_addr) for c in honest if not c.closed}
        left = sum(1 for c in attackers if not c.closed)
    return fewest, len(groups), left


@pytest.mark.anyio
async def test_a_flood_from_two_16s_is_trimmed_before_honest_peers_from_many() -> None:
    fewest, groups, attackers_left = await run_flood(DiversityPolicy(secret=b"flood"))
    ref_fewest, ref_groups, ref_attackers_left = await run_flood(DefaultPolicy())
    assert fewest >= 16
    assert groups >= 16
    # Left: the last wave's grace budget (10) and at most the top peer of each attacker /16.
    assert attackers_left <= 12
    # The reference order, which sees only value and age, loses honest peers wave by wave.
    assert ref_fewest < fewest
    assert ref_groups < groups
    assert ref_attackers_left > attackers_left


class Addr:
    """An address object (as a transport might give), whose str form is a multiaddr."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class OddConn:
    """A connection whose `remote_addr` raises, or is not a str."""

    def __init__(self, peer: str, notifiee: Notifiee, odd: object) -> None:
        self.remote_peer = peer
        self.direction = Direction.INBOUND
        self.num_streams = 0
        self.notifiee = notifiee
        self.odd = odd
        self.closed = False

    @property
    def remote_addr(self) -> str | None:
        if isinstance(self.odd, Exception):
            raise self.odd
        return self.odd  # type: ignore[return-value]

    async def close(self) -> None:
        self.closed = True
        self.notifiee.disconnected(self)


@pytest.mark.anyio
async def test_a_trim_goes_on_whatever_the_connections_say_their_address_is() -> None:
    clock = FakeClock(start=0)
    policy = DiversityPolicy(secret=b"k", protect_keyed=0, protect_top=0, protect_tenure=0)
    manager = ConnManager(low_water=2, high_water=100, grace_period=1.0, clock=clock, policy=policy)
    async with manager:
        notifiee = manager.notifee()
        odd: list[object] = [
            RuntimeError("gone"),
            12345,
            None,
            LookupError("gone too"),
            Addr("/ip4/198.51.1.1/tcp/1"),  # the youngest: the first to close in its group
        ]
        conns = [OddConn(f"p{i}", notifiee, value) for i, value in enumerate(odd)]
        for conn in conns:
            notifiee.connected(conn)
        await manager.flush()
        clock.advance(2.0)
        result = await manager.trim_open_conns()
    assert result.closed == 3
    groups = {str(v.peer): v.reason.netgroup for v in result.victims}  # type: ignore[attr-defined]
    # The four with no readable address are one group, the largest: it goes first. The one
    # whose address object reads as a multiaddr stays.
    assert set(groups.values()) == {"unknown"}
    assert not conns[4].closed
