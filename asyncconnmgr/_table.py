"""PeerTable: the connection manager's state, with no I/O at all.

Theory of operation
-------------------
A *connection* is an object the host reported through `connected`; the table keys it by the
object itself. Its peer (`conn.remote_peer`) and direction are read once, when it is added,
and every later step (its removal, the counts, a trim) uses that snapshot: a host that fills
in either attribute later cannot corrupt the table. A *peer entry* exists while the peer has
at least one connection. Tagging (or bumping a decaying tag of) a peer that has no entry
creates a *temporary* entry: it holds the tags until the peer connects, when it becomes a real
entry with the same tags, or until it has gone unused for the grace period, when it is reaped.

A peer's *value* is the sum of its plain tags and its decaying values; it is kept up to date
on every change, never recomputed. When a peer's last connection goes, its entry goes with its
tags and decaying values. *Protection* is kept apart from entries: a protected peer stays
protected across disconnects until every protection tag is removed.

*Grace* starts when a peer's entry becomes real (its first connection of the current run), not
when it was first tagged. A peer is a *candidate* for trimming when it is not protected, not in
grace, and has at least one connection that is not already being closed. With a grace budget
(the bounded count), the peers in grace beyond the budget are candidates too, after all the
others: the oldest in grace keep their grace, up to `grace_budget` connections.

A trim changes the table in two ways only: `mark_closing` takes the chosen connections out of
the counts at once (so no later trim picks them again), and `unmark_closing` puts back a
connection whose close did not happen. Removing a closed connection is the same `remove_conn`
that a `disconnected` notification causes. The table hands out candidates and closes the
shortest prefix of an order that covers the target (`choose`); which order is the policy's
business, and this module imports none.

Representation: a peer has a handful of connections and tags, so `PeerEntry` packs them
(see its docstring) rather than keeping two dicts per peer (which would cost some 400 bytes a
peer; see the M4 figure of benchmarks/bench.py). One dict maps every connection to its entry,
so a `disconnected` never reads the connection's attributes. A connection must be hashable;
`add_conn` checks it first.

Time: the table never reads a clock. A method that may need the time takes `now`, a
zero-argument function that it calls only when it creates an entry or records a decaying
value, so tagging a known peer costs no clock read. Everything here is synchronous: on one
event loop every method is atomic, so no locks are needed.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import attrs

from ._decay import DecayingTag, DecayingValue, DecaySchedule
from ._models import CandidateConn, TagInfo
from .abc import Conn, Direction, PeerId

__all__ = ["Candidates", "Choice", "PeerEntry", "PeerTable"]

Now = Callable[[], float]

_INBOUND = Direction.INBOUND
_OUTBOUND = Direction.OUTBOUND
_UNKNOWN = Direction.UNKNOWN
_STREAMS = operator.attrgetter("num_streams")
#: `PeerEntry.tag_values` of a peer with no tag.
_NO_VALUES: tuple[int, ...] = ()
#: A peer with more connections than this keeps them in a dict (O(1) per change) rather than
#: in a tuple that is copied on every change.
_PACKED_MAX = 16
#: ... and goes back to a tuple once it has this many or fewer.
_PACKED_BACK = 8
_PACKED_LEN = 2 * _PACKED_MAX
#: The two bits that say a connection's direction in `PeerEntry.dirs`, and back.
_CODE: Final = {_INBOUND: 0, _OUTBOUND: 1, _UNKNOWN: 2}
_WAYS: Final = (_INBOUND, _OUTBOUND, _UNKNOWN, _UNKNOWN)
#: The low bit of every connection's pair in `PeerEntry.dirs`: set for outbound ones.
_OUTBOUND_BITS: Final = int("01" * _PACKED_MAX, 2)
#: How many distinct tuples of tag names a table shares between its peers (see `_names_of`).
_NAME_TUPLES = 4096


class PeerEntry:
    """One peer: its connections, tags and value. Implements `Candidate`.

    Connections live in `links`: up to `_PACKED_MAX` of them as a flat tuple
    `(conn, opened, conn, opened, ...)`, replaced on every change (connections never equal a
    number, so a scan for a connection can only stop at one), with their directions packed
    in the int `dirs`, two bits per connection in the same order (`_CODE`; a peer with at
    most four connections has a `dirs` below 256, an int Python shares); beyond that, a dict
    `{conn: (opened, direction)}`, and `dirs` is then the number of outbound connections.
    The plain tags are two parallel sequences, a tuple of names `tag_names` (replaced when a
    name comes or goes, and shared between peers with the same names) and a tuple of values
    `tag_values` (replaced when a value changes: a tuple of three costs 16 bytes less than a
    list); a peer with no tag has `()` for both. Read them through the accessors below,
    never by slicing.

    `streams` is the stream count the table read for the current trim (see
    `PeerTable.candidates`).
    """

    __slots__ = (
        "closing",
        "dirs",
        "first_seen",
        "links",
        "peer",
        "seq",
        "streams",
        "tag_names",
        "tag_values",
        "value",
    )

    def __init__(self, peer: PeerId, first_seen: float, seq: int) -> None:
        self.peer = peer
        self.first_seen = first_seen
        self.seq = seq
        self.links: tuple[Any, ...] | dict[Conn, tuple[float, Direction]] = ()
        self.dirs = 0
        self.tag_names: tuple[str, ...] = ()
        self.tag_values: tuple[int, ...] = _NO_VALUES
        self.value = 0
        self.closing = 0
        self.streams = 0

    # -- the packed layout -------------------------------------------------------------

    @property
    def temp(self) -> bool:
        """A temporary entry: tagged, never connected (a real one has a connection)."""
        return not self.links

    @property
    def conn_count(self) -> int:
        """Connections, those being closed included."""
        links = self.links
        return len(links) >> 1 if isinstance(links, tuple) else len(links)

    @property
    def open_conns(self) -> int:
        """Connections not being closed."""
        return self.conn_count - self.closing

    @property
    def outbound(self) -> int:
        """Outbound connections, those being closed included."""
        if isinstance(self.links, tuple):
            return (self.dirs & _OUTBOUND_BITS).bit_count()
        return self.dirs

    def conn_list(self) -> list[Conn]:
        """The connections, in the order they were added."""
        links = self.links
        return list(links[::2]) if isinstance(links, tuple) else list(links)

    def link_items(self) -> Iterator[tuple[Conn, float, Direction]]:
        """`(conn, opened, direction)` of each connection."""
        links = self.links
        if isinstance(links, tuple):
            dirs = self.dirs
            ways = [_WAYS[(dirs >> at) & 3] for at in range(0, len(links), 2)]
            return zip(links[::2], links[1::2], ways, strict=True)
        return ((conn, opened, way) for conn, (opened, way) in links.items())

    def _add(self, conn: Conn, opened: float, direction: Direction) -> None:
        links = self.links
        if isinstance(links, tuple):
            if len(links) < _PACKED_LEN:
                self.dirs |= _CODE[direction] << len(links)
                self.links = links + (conn, opened)  # noqa: RUF005 - one allocation
                return
            outbound = self.outbound
            links = {c: (o, d) for c, o, d in self.link_items()}
            self.links = links
            self.dirs = outbound
        links[conn] = (opened, direction)
        if direction is _OUTBOUND:
            self.dirs += 1

    def _remove(self, conn: Conn) -> Direction:
        """Forgets a connection it holds; returns its direction."""
        links = self.links
        if isinstance(links, tuple):
            at = links.index(conn)
            dirs = self.dirs
            self.dirs = (dirs & ((1 << at) - 1)) | ((dirs >> (at + 2)) << at)
            self.links = links[:at] + links[at + 2 :]
            return _WAYS[(dirs >> at) & 3]
        direction = links.pop(conn)[1]
        if direction is _OUTBOUND:
            self.dirs -= 1
        if len(links) <= _PACKED_BACK:
            items = list(links.items())
            self.links = tuple(item for c, (o, _) in items for item in (c, o))
            dirs = 0
            for at, (_, (_, way)) in enumerate(items):
                dirs |= _CODE[way] << (2 * at)
            self.dirs = dirs
        return direction

    # -- the Candidate view ------------------------------------------------------------

    @property
    def conns(self) -> dict[Conn, float]:
        """The connections and the time each was reported open (a new dict)."""
        return {conn: opened for conn, opened, _ in self.link_items()}

    @property
    def connections(self) -> tuple[CandidateConn, ...]:
        """Each connection with its direction, streams, address and open time.

        Stream counts and addresses are read from the connections when this is called; a
        count that cannot be read is 0.
        """
        return tuple(
            CandidateConn(conn, way, _streams_or_zero(conn), _addr_or_none(conn), opened)
            for conn, opened, way in self.link_items()
        )

    @property
    def tags(self) -> dict[str, int]:
        """The plain tags (a new dict)."""
        return dict(zip(self.tag_names, self.tag_values, strict=True))

    def __repr__(self) -> str:
        kind = "temporary " if self.temp else ""
        return f"<{kind}PeerEntry {self.peer!r} value={self.value} conns={self.conn_count}>"


@attrs.frozen(slots=True)
class Candidates:
    """The peers a trim may close now, decided from the state at one moment.

    `eligible` are out of grace. `grace_count` counts the connections of the peers in grace
    (neither protected nor being closed); when it exceeds the bounded count's grace budget,
    `beyond_budget` is by how much and `in_grace` lists those peers: the policy chooses which
    of them lose their grace, to be closed only after the eligible ones (otherwise, and
    without the bounded count, `in_grace` is empty). `count` is the number of connections
    the candidates hold that are not being closed, `eligible_count` the part of it the
    eligible hold. `next_grace_expiry` is the earliest time a peer in grace becomes eligible
    (None if none does).
    """

    eligible: list[PeerEntry]
    in_grace: list[PeerEntry]
    count: int
    eligible_count: int
    next_grace_expiry: float | None
    grace_count: int = 0
    beyond_budget: int = 0


@attrs.frozen(slots=True)
class Choice:
    """The victims a trim closes: entries in closing order and their closable connections.

    `conns` lists the connections, victim by victim; `sizes[i]` is how many of them belong to
    `entries[i]`.
    """

    entries: tuple[PeerEntry, ...] = ()
    conns: tuple[Conn, ...] = ()
    sizes: tuple[int, ...] = ()

    def __add__(self, other: Choice) -> Choice:
        return Choice(
            self.entries + other.entries, self.conns + other.conns, self.sizes + other.sizes
        )


class PeerTable:
    """The sans-IO state of a connection manager (see the module docstring)."""

    def __init__(self, grace_period: float, grace_budget: int | None = None) -> None:
        self.grace_period = grace_period
        self.grace_budget = grace_budget
        self._peers: dict[PeerId, PeerEntry] = {}
        self._temp: dict[PeerId, PeerEntry] = {}  # ordered by creation time
        self._protected: dict[PeerId, set[str]] = {}
        self._conns: dict[Conn, PeerEntry] = {}
        self._closing: set[Conn] = set()
        self._name_tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._schedules: dict[str, DecaySchedule] = {}
        self._outbound_total = 0
        self._unknown_total = 0
        self._closing_outbound = 0
        self._closing_unknown = 0
        self._seq = 0
        #: Bumped by every `protect()`: a trim re-checks protection before each close only
        #: when this moved since it chose its victims.
        self.protect_epoch = 0
        # Connections whose `num_streams` failed, each reported once (weakly where possible).
        self._stream_failed: weakref.WeakSet[Conn] = weakref.WeakSet()
        self._stream_failed_strong: set[int] = set()
        self._new_stream_failures: list[tuple[Conn, BaseException | None]] = []
        self.stream_failures = 0

    # -- counts -------------------------------------------------------------------------

    @property
    def conn_count(self) -> int:
        """Open connections, not counting those being closed."""
        return len(self._conns) - len(self._closing)

    @property
    def closing_count(self) -> int:
        return len(self._closing)

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def temporary_count(self) -> int:
        return len(self._temp)

    @property
    def protected_count(self) -> int:
        return len(self._protected)

    def conns_by_direction(self) -> dict[str, int]:
        """Open connections not being closed, by direction."""
        outbound = self._outbound_total - self._closing_outbound
        unknown = self._unknown_total - self._closing_unknown
        return {
            "inbound": self.conn_count - outbound - unknown,
            "outbound": outbound,
            "unknown": unknown,
        }

    def closing_by_direction(self) -> dict[str, int]:
        outbound, unknown = self._closing_outbound, self._closing_unknown
        return {
            "inbound": len(self._closing) - outbound - unknown,
            "outbound": outbound,
            "unknown": unknown,
        }

    def lookup(self, peer: PeerId) -> PeerEntry | None:
        """The peer's entry, real or temporary. Raises TypeError for an unhashable peer."""
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._temp.get(peer)
        return entry

    def entry_of(self, conn: Conn) -> PeerEntry | None:
        """The entry a known connection belongs to, or None."""
        return self._conns.get(conn)

    def peer_values(self) -> list[int]:
        """The value of every peer with a connection.

        Safe to call from another thread (a metrics scrape): the entries are copied in one
        step, so a peer that comes or goes meanwhile cannot break the iteration.
        """
        return [entry.value for entry in list(self._peers.values())]

    # -- connections ----------------------------------------------------------------------

    def add_conn(self, conn: Conn, now: float) -> PeerEntry | None:
        """Records an open connection and returns its entry; None (no change) if it is
        already known.

        Reads `conn.remote_peer` and `conn.direction` once (a direction that is not a
        `Direction` counts as unknown). Raises, and changes nothing, if the connection is
        unhashable or its attributes fail.
        """
        conns = self._conns
        if conn in conns:  # an unhashable connection raises here
            return None
        peer = conn.remote_peer
        direction = conn.direction
        if direction is _INBOUND:
            code = 0
        elif direction is _OUTBOUND:
            code = 1
            self._outbound_total += 1
        else:
            direction = _UNKNOWN
            code = 2
            self._unknown_total += 1
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._temp.pop(peer, None) if self._temp else None
            if entry is None:
                self._seq += 1
                entry = PeerEntry(peer, now, self._seq)
            else:
                entry.first_seen = now  # grace starts at the connection, not the early tag
            self._peers[peer] = entry
            entry.links = (conn, now)
            entry.dirs = code
        else:
            links = entry.links
            if isinstance(links, tuple) and len(links) < _PACKED_LEN:
                # `PeerEntry._add`, inline: this is the hot path
                if code:
                    entry.dirs |= code << len(links)
                entry.links = links + (conn, now)  # noqa: RUF005 - one allocation
            else:
                entry._add(conn, now, direction)
        conns[conn] = entry
        return entry

    def remove_conn(self, conn: Conn) -> PeerEntry | None:
        """Forgets a connection; the peer goes with its last one. Returns the entry it was
        in, or None if it is unknown."""
        entry = self._conns.pop(conn, None)
        if entry is None:
            return None
        links = entry.links
        if isinstance(links, tuple):  # `PeerEntry._remove`, inline: this is the hot path
            if len(links) == 2:
                direction = _WAYS[entry.dirs]
                entry.links = ()
                entry.dirs = 0
            else:
                at = links.index(conn)
                dirs = entry.dirs
                if dirs:
                    direction = _WAYS[(dirs >> at) & 3]
                    entry.dirs = (dirs & ((1 << at) - 1)) | ((dirs >> (at + 2)) << at)
                else:
                    direction = _INBOUND
                entry.links = links[:at] + links[at + 2 :]
        else:
            direction = entry._remove(conn)
        closing = False
        if entry.closing:  # one look at the set, not two: it is the slow part at scale
            marked = self._closing
            before = len(marked)
            marked.discard(conn)
            closing = len(marked) != before
            if closing:
                entry.closing -= 1
        if direction is _OUTBOUND:
            self._outbound_total -= 1
            if closing:
                self._closing_outbound -= 1
        elif direction is _UNKNOWN:
            self._unknown_total -= 1
            if closing:
                self._closing_unknown -= 1
        if not entry.links:
            del self._peers[entry.peer]
            if self._schedules:
                self._drop_decaying(entry.peer)
        return entry

    def mark_closing(self, conns: Iterable[Conn]) -> list[Conn]:
        """Takes connections out of the counts while a trim closes them; returns those it
        marked (known and not already closing), in order."""
        closing = self._closing
        table = self._conns
        marked: list[Conn] = []
        any_unknown = bool(self._unknown_total)
        outbound = unknown = 0
        for conn in conns:
            entry = table.get(conn)
            if entry is None or conn in closing:
                continue
            closing.add(conn)
            entry.closing += 1
            marked.append(conn)
            if entry.dirs or any_unknown:  # all inbound needs no direction bookkeeping
                code = _code_of(entry, conn)
                if code == 1:
                    outbound += 1
                elif code:
                    unknown += 1
        self._closing_outbound += outbound
        self._closing_unknown += unknown
        return marked

    def unmark_closing(self, conn: Conn) -> bool:
        """Puts back a connection whose close did not happen (failed, timed out, cut short)."""
        if conn not in self._closing:
            return False
        self.unmark_many((conn,))
        return True

    def unmark_many(self, conns: Iterable[Conn]) -> None:
        """`unmark_closing` of each connection (the closes a trim never started)."""
        closing = self._closing
        table = self._conns
        any_unknown = bool(self._unknown_total)
        outbound = unknown = 0
        for conn in conns:
            if conn not in closing:
                continue
            closing.discard(conn)
            entry = table[conn]
            entry.closing -= 1
            if entry.dirs or any_unknown:
                code = _code_of(entry, conn)
                if code == 1:
                    outbound += 1
                elif code:
                    unknown += 1
        self._closing_outbound -= outbound
        self._closing_unknown -= unknown

    def is_closing(self, conn: Conn) -> bool:
        return conn in self._closing

    def conn_protected(self, conn: Conn) -> bool:
        """Whether the peer of a known connection is protected now."""
        entry = self._conns.get(conn)
        return entry is not None and entry.peer in self._protected

    # -- tags ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _entry_for_tagging(self, peer: PeerId, now: Now) -> PeerEntry:
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._temp.get(peer)
            if entry is None:
                entry = PeerEntry(peer, now(), self._next_seq())
                self._temp[peer] = entry
        return entry

    def tag_peer(self, peer: PeerId, tag: str, value: int, now: Now) -> bool:
        """Sets (not adds) the tag's value; an unknown peer gets a temporary entry.

        Returns True if it created a temporary entry.
        """
        entry = self._peers.get(peer)
        created = False
        if entry is None:
            entry = self._temp.get(peer)
            if entry is None:
                entry = self._entry_for_tagging(peer, now)
                created = True
        names = entry.tag_names
        if tag in names:
            values = entry.tag_values
            at = names.index(tag)
            entry.value += value - values[at]
            entry.tag_values = (*values[:at], value, *values[at + 1 :])
        else:
            entry.tag_names = self._names_of(names + (tag,))  # noqa: RUF005 - one allocation
            entry.tag_values = entry.tag_values + (value,)  # noqa: RUF005
            entry.value += value
        return created

    def _names_of(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """One shared tuple for each combination of tag names (up to `_NAME_TUPLES`).

        Peers tagged by the same protocols hold equal tuples of names: shared, they cost a
        pointer each instead of a tuple each (32 bytes a connection in M4).
        """
        shared = self._name_tuples.get(names)
        if shared is not None:
            return shared
        if len(self._name_tuples) < _NAME_TUPLES:
            self._name_tuples[names] = names
        return names

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        entry = self.lookup(peer)
        if entry is not None:
            names = entry.tag_names
            if tag in names:
                at = names.index(tag)
                values = entry.tag_values
                entry.value -= values[at]
                if len(names) == 1:
                    entry.tag_names = ()
                    entry.tag_values = _NO_VALUES
                else:
                    entry.tag_names = self._names_of(names[:at] + names[at + 1 :])
                    entry.tag_values = values[:at] + values[at + 1 :]

    def upsert_tag(self, peer: PeerId, tag: str, fn: Callable[[int], int], now: Now) -> bool:
        """Sets the tag to `fn(current value or 0)`; True if it created a temporary entry.

        `fn` runs before anything changes and may call back into the table; if it raises, or
        returns something that is not an int, nothing changes.
        """
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._temp.get(peer)
            if entry is None:
                return self.tag_peer(peer, tag, _fn_result(fn(0)), now)
        names = entry.tag_names
        at = names.index(tag) if tag in names else -1
        new = fn(entry.tag_values[at] if at >= 0 else 0)
        if type(new) is not int:
            raise TypeError(f"fn must return an int, not {type(new).__name__}")
        if entry.tag_names is not names or entry.temp:
            # `fn` changed this peer's tags (or disconnected it), or the entry is temporary:
            # the general path. (A real entry holds a connection while in the table.)
            return self.tag_peer(peer, tag, new, now)
        values = entry.tag_values
        if at >= 0:
            entry.value += new - values[at]
            entry.tag_values = (*values[:at], new, *values[at + 1 :])
        else:  # as in `tag_peer`
            entry.tag_names = self._names_of(names + (tag,))  # noqa: RUF005
            entry.tag_values = values + (new,)  # noqa: RUF005
            entry.value += new
        return False

    def tag_info(self, peer: PeerId) -> TagInfo | None:
        entry = self.lookup(peer)
        if entry is None:
            return None
        tags = entry.tags
        for name, schedule in self._schedules.items():
            held = schedule.values.get(peer)
            if held is not None:
                tags[name] = tags.get(name, 0) + held.value
        return TagInfo(entry.first_seen, entry.value, tags, entry.conns, entry.temp)

    def protection_tags(self, peer: PeerId) -> tuple[str, ...]:
        """The peer's protection tags, sorted (empty if it is not protected)."""
        return tuple(sorted(self._protected.get(peer, ())))

    # -- protection -----------------------------------------------------------------------

    def protect(self, peer: PeerId, tag: str) -> None:
        self.protect_epoch += 1
        tags = self._protected.get(peer)
        if tags is None:
            self._protected[peer] = {tag}
        else:
            tags.add(tag)

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Removes one protection tag; True if the peer is still protected by another."""
        tags = self._protected.get(peer)
        if tags is None:
            return False
        tags.discard(tag)
        if tags:
            return True
        del self._protected[peer]
        return False

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        tags = self._protected.get(peer)
        if tags is None:
            return False
        return tag is None or tag in tags

    # -- temporary entries ----------------------------------------------------------------

    def next_temporary_expiry(self) -> float | None:
        """When the oldest temporary entry becomes stale, or None if there is none."""
        for entry in self._temp.values():
            return entry.first_seen + self.grace_period
        return None

    def reap_temporary(self, now: float) -> int:
        """Removes temporary entries unused for the grace period; returns how many."""
        cutoff = now - self.grace_period
        stale = []
        for peer, entry in self._temp.items():
            if entry.first_seen > cutoff:
                break  # creation order is time order
            stale.append(peer)
        if not stale:
            return 0
        sizes = [len(schedule.values) for schedule in self._schedules.values()]
        for peer in stale:
            del self._temp[peer]
            self._drop_decaying(peer)
        # A dict never shrinks when keys are deleted: after a mass reaping (a flood of tags
        # for peers that never connect) copy what is left, or the flood's memory stays.
        if _mostly_gone(len(stale), len(self._temp)):
            self._temp = dict(self._temp)
        for schedule, size in zip(self._schedules.values(), sizes, strict=True):
            if _mostly_gone(size - len(schedule.values), len(schedule.values)):
                schedule.values = dict(schedule.values)
        return len(stale)

    # -- decaying tags --------------------------------------------------------------------

    def register_decaying(self, tag: DecayingTag, now: float) -> None:
        if tag.name in self._schedules:
            raise ValueError(f"name: a decaying tag named {tag.name!r} is already registered")
        self._schedules[tag.name] = DecaySchedule(tag, now + tag.interval)

    def unregister_decaying(self, tag: DecayingTag) -> None:
        schedule = self._schedules.get(tag.name)
        if schedule is None or schedule.tag is not tag:
            return
        del self._schedules[tag.name]
        for peer, held in schedule.values.items():
            entry = self.lookup(peer)
            if entry is not None:
                entry.value -= held.value

    def _schedule_of(self, tag: DecayingTag) -> DecaySchedule:
        schedule = self._schedules.get(tag.name)
        if schedule is None or schedule.tag is not tag:
            raise ValueError(f"decaying tag {tag.name!r} is not registered here")
        return schedule

    def bump(self, tag: DecayingTag, peer: PeerId, delta: int, now: Now) -> None:
        """Applies the tag's bump function; if it raises, nothing changes."""
        schedule = self._schedule_of(tag)
        self.lookup(peer)  # an unhashable peer fails here, before the bump function runs
        at = now()
        held = schedule.values.get(peer)
        visit = held if held is not None else DecayingValue(tag.name, peer, at, at, at, 0)
        new = tag.bump_fn(visit, delta)
        if type(new) is not int:
            raise TypeError(f"bump_fn must return an int, not {type(new).__name__}")
        if self._schedules.get(tag.name) is not schedule:
            return  # the bump function closed its own tag
        entry = self._entry_for_tagging(peer, now)
        current = schedule.values.get(peer)
        entry.value += new - (current.value if current is not None else 0)
        schedule.values[peer] = DecayingValue(tag.name, peer, visit.added, at, at, new)

    def remove_decaying(self, tag: DecayingTag, peer: PeerId) -> None:
        schedule = self._schedule_of(tag)
        held = schedule.values.pop(peer, None)
        if held is not None:
            entry = self.lookup(peer)
            if entry is not None:
                entry.value -= held.value

    def decay(self, now: float) -> list[tuple[DecayingValue, Exception]]:
        """Visits the values of every tag that is due; returns the decay functions' errors.

        A decay function that raises (or returns something malformed) leaves that value as it
        was. A function may call back into the table; a value it changed meanwhile is left
        with the change.
        """
        errors: list[tuple[DecayingValue, Exception]] = []
        for name, schedule in list(self._schedules.items()):
            if schedule.next_due > now:
                continue
            interval = schedule.tag.interval
            missed = int((now - schedule.next_due) // interval)
            schedule.next_due += (missed + 1) * interval
            decay_fn = schedule.tag.decay_fn
            values = schedule.values
            for peer, held in list(values.items()):
                visit = DecayingValue(name, peer, held.added, now, held.last_bump, held.value)
                try:
                    after, remove = decay_fn(visit)
                except Exception as exc:
                    errors.append((held, exc))
                    continue
                if type(after) is not int:
                    bad = TypeError(f"decay_fn must return an int, not {type(after).__name__}")
                    errors.append((held, bad))
                    continue
                if values.get(peer) is not held or self._schedules.get(name) is not schedule:
                    continue  # changed by a callback while we visited it
                entry = self.lookup(peer)
                assert entry is not None, "a decaying value outlived its peer's entry"
                if remove:
                    del values[peer]
                    entry.value -= held.value
                elif after == held.value:
                    values[peer] = visit  # the same value, visited now
                else:
                    values[peer] = DecayingValue(name, peer, held.added, now, held.last_bump, after)
                    entry.value += after - held.value
        return errors

    def _drop_decaying(self, peer: PeerId) -> None:
        for schedule in self._schedules.values():
            schedule.values.pop(peer, None)

    # -- trimming -------------------------------------------------------------------------

    def candidates(self, now: float) -> Candidates:
        """The peers a trim may close now (see `Candidates`); reads each candidate's stream
        count once, into `PeerEntry.streams`. Changes nothing else."""
        peers = self._peers
        # Protected entries, found by peer once: testing each entry by identity is cheaper
        # than hashing every peer id (a py-libp2p ID hashes in Python).
        protected = {peers[peer] for peer in self._protected if peer in peers}
        grace = self.grace_period
        cutoff = now - grace
        eligible: list[PeerEntry] = []
        in_grace: list[PeerEntry] = []
        count = grace_count = 0
        for entry in peers.values():
            if entry in protected:
                continue
            links = entry.links  # `entry.open_conns`, inline: this runs for every peer
            open_conns = (len(links) >> 1 if type(links) is tuple else len(links)) - entry.closing
            if open_conns <= 0:
                continue
            if entry.first_seen > cutoff:
                in_grace.append(entry)
                grace_count += open_conns
            else:
                eligible.append(entry)
                count += open_conns
        eligible_count = count
        next_grace = min((entry.first_seen for entry in in_grace), default=None)
        expiry = None if next_grace is None else next_grace + grace
        budget = self.grace_budget
        beyond = 0 if budget is None else grace_count - budget
        if beyond > 0:
            # More in grace than the budget: which of them lose it is the policy's choice.
            count += grace_count
        else:
            beyond = 0
            in_grace = []
        self._read_streams(eligible)
        self._read_streams(in_grace)
        return Candidates(eligible, in_grace, count, eligible_count, expiry, grace_count, beyond)

    def _read_streams(self, entries: list[PeerEntry]) -> None:
        """`entry.streams` of each entry: the sum over its connections, read once.

        A connection whose `num_streams` raises or is not an int counts as idle (0): it
        never stops a trim. Each such connection is reported once (`take_stream_failures`).
        """
        for entry in entries:
            links = entry.links
            conns = links[::2] if isinstance(links, tuple) else links
            try:
                streams = sum(map(_STREAMS, conns))
            except Exception:
                streams = None
            if type(streams) is not int or streams < 0:
                streams = sum(self._read_one(conn) for conn in conns)
            entry.streams = streams

    def _read_one(self, conn: Conn) -> int:
        error: BaseException | None = None
        try:
            streams = conn.num_streams
        except Exception as exc:
            error = exc
        else:
            if type(streams) is int and streams >= 0:
                return streams
        self._stream_failure(conn, error)
        return 0

    def _stream_failure(self, conn: Conn, error: BaseException | None) -> None:
        try:
            if conn in self._stream_failed:
                return
            self._stream_failed.add(conn)
        except TypeError:  # cannot be weakly referenced: remember its id
            if id(conn) in self._stream_failed_strong:
                return
            self._stream_failed_strong.add(id(conn))
        self.stream_failures += 1
        self._new_stream_failures.append((conn, error))

    def take_stream_failures(self) -> list[tuple[Conn, BaseException | None]]:
        """The connections whose stream count failed for the first time since the last call
        (and the exception, or None for a value that is not an int)."""
        failures, self._new_stream_failures = self._new_stream_failures, []
        return failures

    def choose(self, ordered: Iterable[PeerEntry], target: int) -> Choice:
        """The shortest prefix of `ordered` whose closable connections cover `target`.

        Each item must be a candidate this table handed out; an item given twice is skipped.
        Pure: the caller marks the chosen connections closing.
        """
        entries: list[PeerEntry] = []
        conns: list[Conn] = []
        sizes: list[int] = []
        seen: set[int] = set()
        closing = self._closing
        table = self._conns
        covered = 0
        if target <= 0:
            return Choice()
        for entry in ordered:
            if type(entry) is not PeerEntry:
                raise TypeError(
                    f"a policy must return the candidates it was given, not {type(entry).__name__}"
                )
            links = entry.links
            if not links or id(entry) in seen:
                continue  # gone since it was handed out, or given twice
            if type(links) is tuple:
                closable: Sequence[Conn] = links[::2]
            else:
                closable = list(links)
            if table.get(closable[0]) is not entry:
                continue  # not this table's (the test costs a hash of a conn, not of a peer)
            seen.add(id(entry))
            if entry.closing:
                closable = [conn for conn in closable if conn not in closing]
            if not closable:
                continue
            entries.append(entry)
            conns += closable
            sizes.append(len(closable))
            covered += len(closable)
            if covered >= target:
                break
        return Choice(tuple(entries), tuple(conns), tuple(sizes))

    # -- checks ---------------------------------------------------------------------------

    def _check_invariants(self) -> None:
        """Asserts every internal consistency rule; for tests."""
        total = outbound_total = unknown_total = closing_out = closing_unknown = 0
        seen_closing = 0
        for peer, entry in self._peers.items():
            assert entry.peer == peer
            assert not entry.temp
            _check_layout(entry)
            conns = entry.conn_list()
            assert conns, f"{entry!r} has no connection but is not temporary"
            assert peer not in self._temp
            total += len(conns)
            for conn, _, way in entry.link_items():
                assert self._conns.get(conn) is entry, f"{conn!r} is not filed under {entry!r}"
                outbound_total += way is _OUTBOUND
                unknown_total += way is _UNKNOWN
                if conn in self._closing:
                    closing_out += way is _OUTBOUND
                    closing_unknown += way is _UNKNOWN
            closing_here = sum(1 for conn in conns if conn in self._closing)
            assert entry.closing == closing_here, entry
            seen_closing += closing_here
            outbound = sum(1 for _, _, way in entry.link_items() if way is _OUTBOUND)
            assert entry.outbound == outbound, entry
        assert total == len(self._conns), (total, len(self._conns))
        assert (outbound_total, unknown_total) == (self._outbound_total, self._unknown_total)
        assert (closing_out, closing_unknown) == (self._closing_outbound, self._closing_unknown)
        assert seen_closing == len(self._closing), "a closing connection is not in the table"
        previous = None
        for peer, entry in self._temp.items():
            assert entry.peer == peer
            assert entry.temp
            _check_layout(entry)
            assert entry.links == ()
            assert not entry.closing
            assert previous is None or previous <= entry.first_seen, "temporary order broken"
            previous = entry.first_seen
        for entry in [*self._peers.values(), *self._temp.values()]:
            decaying = sum(
                s.values[entry.peer].value
                for s in self._schedules.values()
                if entry.peer in s.values
            )
            assert entry.value == sum(entry.tags.values()) + decaying, entry
        for schedule in self._schedules.values():
            for peer, held in schedule.values.items():
                assert self.lookup(peer) is not None, f"decaying value of {peer!r} outlived it"
                assert held.tag == schedule.tag.name
                assert held.peer == peer
        for tags in self._protected.values():
            assert tags, "an empty protection set was kept"


def _streams_or_zero(conn: Conn) -> int:
    try:
        streams = conn.num_streams
    except Exception:
        return 0
    return streams if type(streams) is int and streams >= 0 else 0


def _addr_or_none(conn: Conn) -> str | None:
    try:
        addr = getattr(conn, "remote_addr", None)
    except Exception:
        return None
    return addr if addr is None or isinstance(addr, str) else str(addr)


def _fn_result(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"fn must return an int, not {type(value).__name__}")
    return value


def _mostly_gone(removed: int, left: int) -> bool:
    """Whether a dict that lost `removed` keys and holds `left` is worth copying."""
    return removed >= 1024 and removed > 2 * left


def _check_layout(entry: PeerEntry) -> None:
    """The layouts of the connections and of the tags (see `PeerEntry`)."""
    links = entry.links
    if isinstance(links, tuple):
        assert len(links) % 2 == 0, entry
        assert len(links) <= _PACKED_LEN, entry
        conns = links[::2]
        assert all(isinstance(opened, (int, float)) for opened in links[1::2]), entry
        assert entry.dirs >> len(links) == 0, entry
        assert all((entry.dirs >> at) & 3 != 3 for at in range(0, len(links), 2)), entry
        assert all(not isinstance(conn, (int, float, Direction)) for conn in conns), entry
        assert len({id(conn) for conn in conns}) == len(conns), f"{entry!r}: duplicate conn"
    else:
        assert type(links) is dict, entry
        assert len(links) > _PACKED_BACK, entry
        assert entry.dirs == sum(1 for _, way in links.values() if way is _OUTBOUND), entry
    names, values = entry.tag_names, entry.tag_values
    assert type(names) is tuple, entry
    assert all(isinstance(name, str) and name for name in names), entry
    assert len(set(names)) == len(names), f"{entry!r}: duplicate tag"
    assert type(values) is tuple, entry
    assert len(values) == len(names), entry
    assert all(type(value) is int for value in values), entry


def _code_of(entry: PeerEntry, conn: Conn) -> int:
    """The two-bit direction code of one of the entry's connections (see `PeerEntry.dirs`)."""
    links = entry.links
    if isinstance(links, tuple):
        return (entry.dirs >> links.index(conn)) & 3
    return _CODE[links[conn][1]]
