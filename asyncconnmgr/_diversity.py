"""An eclipse-resistant trim order: protect a diverse core, then thin the largest netgroups.

Theory of operation
-------------------
An attacker who wants to eclipse a host (hold every one of its slots, so that it sees only
what the attacker shows it) can make many connections cheaply, but only from the addresses
it controls, and those cluster: a few /16s, a few cloud providers. Value and age alone
cannot tell it apart from honest peers, since a patient attacker can look like an average
honest peer. Bitcoin Core's eviction (`src/node/eviction.cpp`, `SelectNodeToEvict`) answers
with two steps, which `DiversityPolicy` follows:

1. Protect a core that an attacker cannot buy cheaply: peers of a few netgroups chosen by a
   secret key (an attacker cannot tell which of its groups would be chosen), the peers that
   did the most useful work, the longest-connected, and the peers this host dialled itself.
2. Close the rest from the most-represented netgroup first, so that a flood from a few
   groups is thinned before any peer of a rare group is touched.

A *netgroup* is the address block a connection comes from (`netgroup`): an IPv4 /16, an
IPv6 /32, an autonomous system when an ASN map is given, a DNS name, or "unknown". A peer's
group is the group of its oldest connection whose address can be read.

The policy is a pure function of the candidates' snapshots and its own settings (the
secret included): the same candidates give the same order. It keeps no state between
trims except the victims' reasons of the latest trim and caches of parsed addresses.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeAlias

from ._config import check_callable, check_fraction, check_int
from ._policy import Candidate, default_key

__all__ = ["UNKNOWN_GROUP", "DiversityPolicy", "DiversityReason", "IPAddress", "netgroup"]

logger = logging.getLogger("asyncconnmgr")

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
#: An ASN map: the autonomous system number an address belongs to, or None if unknown.
AsMap: TypeAlias = Callable[[IPAddress], int | None]

#: The group of an address `netgroup` cannot read (None, garbage, a value that is not a str
#: nor an `ipaddress` address, a transport it does not know such as `/unix/...`).
UNKNOWN_GROUP = "unknown"

_DNS_PROTOCOLS = frozenset({"dns", "dns4", "dns6", "dnsaddr"})
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_PORT = re.compile(r"[0-9]{1,5}")
#: RFC 6052 (NAT64, 64:ff9b::/96) and RFC 6145 (::ffff:0:0:0/96): the IPv4 address is the
#: last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
#: How many parsed addresses (or twice the connections of the latest trim, if more) and keyed
#: groups a policy remembers before it starts afresh.
_CACHE_MAX = 1 << 16


def netgroup(
    addr: object,
    *,
    asmap: AsMap | None = None,
    ipv4_prefix: int = 16,
    ipv6_prefix: int = 32,
) -> str:
    """The netgroup of a remote address, as a label such as ``"ip4:203.0.113.0/16"``.

    `addr` may be a multiaddr (``/ip4/1.2.3.4/tcp/4001``, ``/ip6/2001:db8::1/udp/1/quic-v1``,
    ``/ip6zone/eth0/ip6/fe80::1/...``, ``/dns/example.com/tcp/1`` and ``/dns4``, ``/dns6``,
    ``/dnsaddr``), ``host:port``, ``[v6]:port``, a bare IPv4 or IPv6 address or host name
    (a bare name needs a dot), or an `ipaddress` address object. The labels:

    - ``ip4:A.B.0.0/16``: the address's IPv4 block of `ipv4_prefix` bits (Bitcoin Core's
      /16). An IPv6 address that carries an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``,
      NAT64 ``64:ff9b::/96``, SIIT, 6to4 ``2002::/16``, Teredo's client) is that IPv4
      address: one host must not count twice.
    - ``ip6:2001:db8::/32``: the IPv6 block of `ipv6_prefix` bits.
    - ``as:64496``: the autonomous system `asmap` returns for the address, when it returns
      an int (None falls back to the block). An exception raised by `asmap` reaches the
      caller (`DiversityPolicy` catches it and falls back to the block).
    - ``dns:example.com``: a DNS name (lower case, without a final dot) is its own group.
    - ``"unknown"`` (`UNKNOWN_GROUP`): anything else, including None, garbage and values of
      another type. An address never makes this raise.

    Private and loopback addresses are grouped by block like any other. Raises TypeError
    or ValueError (naming the argument) only for a bad `asmap`, `ipv4_prefix` or
    `ipv6_prefix`.
    """
    return _Grouper(asmap, ipv4_prefix, ipv6_prefix, guard=False).group(addr)


class DiversityReason(NamedTuple):
    """Why `DiversityPolicy` chose a victim (its `Victim.reason`).

    `netgroup` is the victim's group and `group_conns` how many of the candidates'
    connections that group still held when the victim was chosen (it was then the most
    represented, or tied with it). `protected_by` names the protection the victim had, or is
    None; a protected victim is closed only when the unprotected candidates could not cover
    the target. `key` is the victim's `default_key`, its place inside its group.
    """

    netgroup: str
    group_conns: int
    protected_by: str | None
    key: tuple[int, bool, bool, int, float, int]


class DiversityPolicy:
    """Protects a diverse core of the candidates, then closes from the largest netgroups.

    A trim policy (`select(candidates, target, now)`) in the spirit of Bitcoin Core's
    `SelectNodeToEvict`. Before any victim is chosen it protects, in this order, and never
    more than the connections the trim keeps (the candidates' connections minus `target`):

    1. `protect_outbound`: outbound-only peers (every connection dialled by this host; an
       attacker cannot make the host dial it) until they hold this share of the kept
       connections, the best first in the default order. Default 0.3: Lighthouse's
       `TARGET_OUTBOUND_ONLY_FACTOR`, the share of its peers it keeps outbound-only when it
       prunes. Bitcoin Core protects every outbound peer (`ProtectOutboundConnections`).
    2. `protect_keyed`: one peer with a positive value (the best in the default order) from
       each of this many netgroups, those with the highest keyed hash of the group under
       `secret`. Default 4: `SelectNodeToEvict` protects 4 peers by keyed netgroup ("an
       attacker cannot predict which netgroups will be protected"); here they come from 4
       distinct groups, and an idle peer is not one of them (measured: an attacker that
       holds idle slots and happens to own a favoured group kept a slot for good).
    3. `protect_top`: the most valuable peer of each of this many largest netgroups, if its
       value is positive. Default 16: Bitcoin Core protects 16 peers for useful work, work an
       attacker cannot fake cheaply (4 that most recently sent novel transactions, 4 novel
       blocks, 8 block-relay-only peers that sent novel blocks); here a peer's value (its
       tags) stands for that work, taken per group so that a flood from a group cannot evict
       an honest peer that shares it, and no group gets more than one.
    4. `protect_tenure`: this share of the still unprotected candidates with a positive
       value, the longest connected (earliest `first_seen`), taken one per netgroup per round
       (the oldest of each group, oldest first, then the second oldest of each, ...). Bitcoin
       Core protects half of the remaining by tenure alone
       (`ProtectEvictionCandidatesByRatio`, "precludes attacks that start later"); here the
       tenure of an idle peer proves only patience (an attacker that connects first and
       holds its slots), and one group's attackers gain one peer's worth a round. Default
       0.25.

    The defaults were measured on the simulator (`python -m asyncconnmgr.sim`).

    Only the outbound reservation keeps a peer worth nothing: the other protections reward
    work (a positive value), so with no tags at all the order is the netgroup order below.

    Then it closes the unprotected candidates from the most-represented netgroup first (the
    group holding the most connections among the candidates not yet chosen), inside a group
    in the default order (`default_key`: least valuable, idle, inbound, youngest first);
    between groups of the same size, the one whose next victim comes first in the default
    order. Protected candidates come after every unprotected one, in the same order: they
    are closed only when nothing else can cover the target.

    Candidates whose address is unknown share one group ("unknown"), so they are closed
    first when they are many: an address the host cannot read is no evidence of diversity.

    Arguments (keyword-only; a wrong type raises TypeError, a wrong value ValueError, naming
    the argument):
        secret: the key of the keyed netgroup hash (bytes, at least 1; default 32 bytes of
            `os.urandom`). Give one for reproducible orders; keep it secret in production.
            One policy per manager: managers sharing a policy share its secret.
        asmap: optional ASN map, `asmap(ipaddress_address) -> int | None`: peers of one
            autonomous system form one group. If it raises, the address is grouped by
            block (logged once).
        ipv4_prefix, ipv6_prefix: the block sizes in bits (defaults 16 and 32, Bitcoin
            Core's `GetGroup`).
        protect_outbound, protect_keyed, protect_top, protect_tenure: see above; shares
            are within [0, 1], counts are ints >= 0.

    `select` never raises because of an address; it holds no lock and awaits nothing, so a
    cancelled trim leaves nothing behind in it.
    """

    __slots__ = (
        "_grouper",
        "_hashes",
        "_key",
        "_reasons",
        "_reasons_at",
        "protect_keyed",
        "protect_outbound",
        "protect_tenure",
        "protect_top",
    )

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        asmap: AsMap | None = None,
        ipv4_prefix: int = 16,
        ipv6_prefix: int = 32,
        protect_outbound: float = 0.3,
        protect_keyed: int = 4,
        protect_top: int = 16,
        protect_tenure: float = 0.25,
    ) -> None:
        if secret is None:
            secret = os.urandom(32)
        elif not isinstance(secret, bytes):
            raise TypeError(f"secret must be bytes, not {type(secret).__name__}")
        elif not secret:
            raise ValueError("secret must not be empty")
        self._grouper = _Grouper(asmap, ipv4_prefix, ipv6_prefix, guard=True)
        self.protect_outbound = check_fraction("protect_outbound", protect_outbound, closed=True)
        self.protect_keyed = check_int("protect_keyed", protect_keyed, minimum=0)
        self.protect_top = check_int("protect_top", protect_top, minimum=0)
        self.protect_tenure = check_fraction("protect_tenure", protect_tenure, closed=True)
        # blake2b takes a key of up to 64 bytes; a longer secret is first hashed down.
        self._key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
        self._hashes: dict[str, int] = {}
        self._reasons: dict[int, tuple[int, DiversityReason]] = {}
        self._reasons_at: float | None = None

    # -- groups ---------------------------------------------------------------------------

    def netgroup_of(self, candidate: Candidate) -> str:
        """The candidate's netgroup: that of its oldest connection whose address can be
        read, or "unknown". Never raises because of an address."""
        return self._group_and_size(candidate)[0]

    def _group_and_size(self, candidate: Candidate) -> tuple[str, int]:
        """The candidate's netgroup and its number of connections (closing ones included)."""
        grouper = self._grouper
        known = grouper.cache
        best: str | None = None
        best_opened = 0.0
        # Addresses are read from the connections: `Candidate.connections` would read every
        # stream count again, which costs more than the whole grouping.
        conns = candidate.conns
        for conn, opened in conns.items():
            try:
                addr = conn.remote_addr
                label = known.get(addr) if type(addr) is str else None
                if label is None:
                    label = grouper.group(
                        addr if addr is None or isinstance(addr, str) else str(addr)
                    )
            except Exception:  # an address that cannot be read is no address
                continue
            if label != UNKNOWN_GROUP and (best is None or opened < best_opened):
                best, best_opened = label, opened
        return (UNKNOWN_GROUP if best is None else best), len(conns)

    def _keyed(self, group: str) -> int:
        """The group's keyed hash: a 64-bit number that only a holder of the secret can
        compute, so no one else can tell which groups `protect_keyed` favours."""
        keyed = self._hashes
        value = keyed.get(group)
        if value is None:
            digest = hashlib.blake2b(group.encode(), key=self._key, digest_size=8).digest()
            value = int.from_bytes(digest, "big")
            if len(keyed) >= _CACHE_MAX:
                keyed.clear()
            keyed[group] = value
        return value

    # -- the order ------------------------------------------------------------------------

    def select(
        self, candidates: Sequence[Candidate], target: int, now: float
    ) -> Iterable[Candidate]:
        """The candidates in closing order, up to the first prefix that covers `target`
        connections (all of them if they cannot). Returns the objects it was given, each
        once; the victims' reasons are kept for `reason` until a trim at another time."""
        if self._reasons_at != now:
            self._reasons = {}
            self._reasons_at = now
        if target <= 0 or not candidates:
            return []
        keys = [default_key(c) for c in candidates]
        conns = [c.open_conns for c in candidates]
        self._grouper.bound_cache(sum(conns))
        index: dict[str, int] = {}
        group_of: list[int] = []
        outbound_only: list[int] = []
        for at, candidate in enumerate(candidates):
            label, size = self._group_and_size(candidate)
            group_of.append(index.setdefault(label, len(index)))
            if candidate.outbound >= size > 0:
                outbound_only.append(at)
        names = list(index)
        sizes = [0] * len(names)
        for at, group in enumerate(group_of):
            sizes[group] += conns[at]
        # The default order as ranks, so that the heap below compares ints, not key tuples.
        # Each group's members, in closing order, are `flat[begin[g]:begin[g + 1]]`.
        count = len(candidates)
        by_key = sorted(range(count), key=keys.__getitem__)
        rank = [0] * count
        for place, at in enumerate(by_key):
            rank[at] = place
        begin = [0] * (len(names) + 1)
        for group in group_of:
            begin[group + 1] += 1
        for group in range(len(names)):
            begin[group + 1] += begin[group]
        flat = [0] * count
        fill = begin[:-1]
        for at in by_key:
            group = group_of[at]
            flat[fill[group]] = at
            fill[group] += 1

        protected = self._protect(
            candidates, target, keys, conns, group_of, flat, begin, sizes, names, outbound_only
        )
        # Everyone unprotected first, then the protected; both from the largest group. The
        # first round sets the protected aside (in closing order) as it meets them; the
        # second runs only once the first has taken every unprotected one, so by then
        # every protected candidate has been set aside.
        order: list[Candidate] = []
        reasons = self._reasons
        covered = 0
        cursor = begin[:-1]
        set_aside: dict[int, list[int]] = {}

        def next_unprotected(group: int) -> int | None:
            at, end = cursor[group], begin[group + 1]
            while at < end and flat[at] in protected:
                set_aside.setdefault(group, []).append(flat[at])
                at += 1
            cursor[group] = at + 1
            return flat[at] if at < end else None

        def take(groups: Iterable[int], following: Callable[[int], int | None]) -> None:
            nonlocal covered
            heap = []
            for group in groups:
                first = following(group)
                if first is not None:
                    heap.append((-sizes[group], rank[first], first, group))
            heapq.heapify(heap)
            while heap and covered < target:
                _, _, at, group = heapq.heappop(heap)
                candidate = candidates[at]
                order.append(candidate)
                covered += conns[at]
                size = sizes[group]
                sizes[group] -= conns[at]
                reasons[id(candidate)] = (
                    candidate.seq,
                    DiversityReason(names[group], size, protected.get(at), keys[at]),
                )
                after = following(group)
                if after is not None:
                    heapq.heappush(heap, (-sizes[group], rank[after], after, group))

        take(range(len(names)), next_unprotected)
        if covered < target and set_aside:
            for aside in set_aside.values():
                aside.reverse()  # popped from the end: the first to close is last

            def next_protected(group: int) -> int | None:
                aside = set_aside[group]
                return aside.pop() if aside else None

            take(list(set_aside), next_protected)
        return order

    def _protect(
        self,
        candidates: Sequence[Candidate],
        target: int,
        keys: list[tuple[int, bool, bool, int, float, int]],
        conns: list[int],
        group_of: list[int],
        flat: list[int],
        begin: list[int],
        sizes: list[int],
        names: list[str],
        outbound_only: list[int],
    ) -> dict[int, str]:
        """The candidates protected from this trim (by index), each with the rule that
        protected it, within the connections the trim keeps. Group `g`'s members are
        `flat[begin[g]:begin[g + 1]]`, in closing order (the best last)."""
        budget = sum(conns) - target
        protected: dict[int, str] = {}

        def protect(at: int, rule: str) -> bool:
            nonlocal budget
            if at in protected or conns[at] > budget:
                return False
            protected[at] = rule
            budget -= conns[at]
            return True

        if budget <= 0:
            return protected
        if self.protect_outbound > 0:
            reserve = math.ceil(self.protect_outbound * budget)
            outbound_only.sort(key=keys.__getitem__, reverse=True)
            held = 0
            for at in outbound_only:
                if held >= reserve:
                    break
                if protect(at, "outbound"):
                    held += conns[at]
        if self.protect_keyed > 0:
            keyed = self._keyed
            chosen = 0
            for _, group in sorted(
                ((keyed(name), g) for g, name in enumerate(names)), reverse=True
            ):
                if chosen >= self.protect_keyed:
                    break
                best = next(
                    (
                        flat[i]
                        for i in range(begin[group + 1] - 1, begin[group] - 1, -1)
                        if flat[i] not in protected and candidates[flat[i]].value > 0
                    ),
                    None,
                )
                if best is not None and protect(best, "keyed"):
                    chosen += 1
        if self.protect_top > 0:
            keyed = self._keyed
            largest = heapq.nlargest(
                self.protect_top, range(len(names)), key=lambda g: (sizes[g], keyed(names[g]))
            )
            for group in largest:
                top = flat[begin[group + 1] - 1]
                if candidates[top].value > 0:
                    protect(top, "top")
        if self.protect_tenure > 0:
            # The longest-connected, one per group per round: the oldest of every group
            # (oldest first), then the second oldest of every group, and so on.
            by_tenure = sorted(
                (c.first_seen, c.seq, at)
                for at, c in enumerate(candidates)
                if c.value > 0 and at not in protected
            )
            held_by = [0] * len(names)
            rounds: list[tuple[int, float, int, int]] = []
            for first_seen, seq, at in by_tenure:
                group = group_of[at]
                rounds.append((held_by[group], first_seen, seq, at))
                held_by[group] += 1
            rounds.sort()
            for *_, at in rounds[: int(self.protect_tenure * len(rounds))]:
                protect(at, "tenure")
        return protected

    def reason(self, candidate: Candidate) -> DiversityReason | None:
        """Why the latest trim chose this victim (a `DiversityReason`), or None if it did
        not choose it."""
        known = self._reasons.get(id(candidate))
        if known is None or known[0] != candidate.seq:
            return None
        return known[1]

    def __repr__(self) -> str:
        grouper = self._grouper
        return (
            f"DiversityPolicy(asmap={grouper.asmap!r}, ipv4_prefix={grouper.ipv4_prefix}, "
            f"ipv6_prefix={grouper.ipv6_prefix}, protect_outbound={self.protect_outbound}, "
            f"protect_keyed={self.protect_keyed}, protect_top={self.protect_top}, "
            f"protect_tenure={self.protect_tenure})"
        )


class _Grouper:
    """Parses addresses into netgroup labels, remembering in `cache` the label of each
    address string it parsed.

    With `guard`, an exception raised by the ASN map falls back to the address block (and is
    logged once) instead of reaching the caller.
    """

    __slots__ = ("_failed", "asmap", "cache", "guard", "ipv4_prefix", "ipv6_prefix")

    def __init__(
        self, asmap: AsMap | None, ipv4_prefix: object, ipv6_prefix: object, *, guard: bool
    ) -> None:
        if asmap is not None:
            check_callable("asmap", asmap)
        self.asmap = asmap
        self.ipv4_prefix = check_int("ipv4_prefix", ipv4_prefix, minimum=0)
        if self.ipv4_prefix > 32:
            raise ValueError(f"ipv4_prefix must be <= 32, got {self.ipv4_prefix}")
        self.ipv6_prefix = check_int("ipv6_prefix", ipv6_prefix, minimum=0)
        if self.ipv6_prefix > 128:
            raise ValueError(f"ipv6_prefix must be <= 128, got {self.ipv6_prefix}")
        self.guard = guard
        self._failed = False
        self.cache: dict[str, str] = {}

    def bound_cache(self, addresses: int) -> None:
        """Forgets every remembered address if there are more than twice `addresses` (the
        connections of the trim at hand) and more than `_CACHE_MAX`: the cache holds the
        addresses of recent trims, never of every connection ever seen."""
        if len(self.cache) > max(_CACHE_MAX, 2 * addresses):
            self.cache.clear()

    def group(self, addr: object) -> str:
        if isinstance(addr, str):
            cache = self.cache
            label = cache.get(addr)
            if label is None:
                try:
                    parsed = _parse(addr)
                except Exception:  # a str subclass that misbehaves is still no address
                    parsed = None
                label = self._label(parsed)
                cache[addr] = label
            return label
        if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return self._label(addr)
        return UNKNOWN_GROUP

    def _label(self, parsed: IPAddress | str | None) -> str:
        if parsed is None:
            return UNKNOWN_GROUP
        if isinstance(parsed, str):
            return f"dns:{parsed}"
        address = _linked_ipv4(parsed) if isinstance(parsed, ipaddress.IPv6Address) else parsed
        if self.asmap is not None:
            asn = self._asn(address)
            if asn is not None:
                return f"as:{asn}"
        if isinstance(address, ipaddress.IPv4Address):
            bits = self.ipv4_prefix
            block = ipaddress.IPv4Address(int(address) >> (32 - bits) << (32 - bits))
            return f"ip4:{block}/{bits}"
        bits = self.ipv6_prefix
        block6 = ipaddress.IPv6Address(int(address) >> (128 - bits) << (128 - bits))
        return f"ip6:{block6}/{bits}"

    def _asn(self, address: IPAddress) -> int | None:
        assert self.asmap is not None
        try:
            asn = self.asmap(address)
        except Exception:
            if not self.guard:
                raise
            if not self._failed:
                self._failed = True
                logger.warning(
                    "asyncconnmgr: the ASN map raised for %s; grouping by address block",
                    address,
                    exc_info=True,
                )
            return None
        if type(asn) is int and asn >= 0:
            return asn
        return None


def _parse(addr: str) -> IPAddress | str | None:
    """An IP address, a lower-case DNS name, or None if `addr` is neither."""
    text = addr.strip()
    if not text:
        return None
    if text.startswith("/"):
        return _parse_multiaddr(text)
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        ip = _ip(text[1:end])
        return ip if isinstance(ip, ipaddress.IPv6Address) else None
    ip = _ip(text)
    if ip is not None:
        return ip
    if text.count(":") == 1:
        host, port = text.split(":")
        if not _is_port(port):
            return None
        ip = _ip(host)
        if ip is not None:
            return ip if isinstance(ip, ipaddress.IPv4Address) else None
        return _hostname(host)
    return _hostname(text) if "." in text.strip(".") else None


def _parse_multiaddr(text: str) -> IPAddress | str | None:
    parts = text.split("/")[1:]
    if len(parts) >= 4 and parts[0] == "ip6zone":
        parts = parts[2:]
    if len(parts) < 2:
        return None
    protocol, value = parts[0], parts[1]
    if protocol == "ip4":
        ip = _ip(value)
        return ip if isinstance(ip, ipaddress.IPv4Address) else None
    if protocol == "ip6":
        ip = _ip(value)
        return ip if isinstance(ip, ipaddress.IPv6Address) else None
    if protocol in _DNS_PROTOCOLS:
        return _hostname(value)
    return None


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_port(text: str) -> bool:
    return _PORT.fullmatch(text) is not None and int(text) <= 65535


def _hostname(text: str) -> str | None:
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or _HOSTNAME.fullmatch(name) is None:
        return None
    if name.replace(".", "").isdigit():  # "1.2.3" is a broken address, not a name
        return None
    return name


def _linked_ipv4(address: ipaddress.IPv6Address) -> IPAddress:
    """The IPv4 address an IPv6 one carries, if it carries one; else the address itself."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _SIIT:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    teredo = address.teredo
    if teredo is not None:
        return teredo[1]
    return address
