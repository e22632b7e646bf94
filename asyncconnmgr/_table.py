"""PeerTable: the connection manager's state, with no I/O at all.

Theory of operation
-------------------
A *connection* is an object the host reported through `connected`; the table keys it by the
object itself and files it under `conn.remote_peer`. A *peer entry* exists while the peer has
at least one connection. Tagging (or bumping a decaying tag of) a peer that has no entry
creates a *temporary* entry: it holds the tags until the peer connects, when it becomes a real
entry with the same tags, or until it has gone unused for the grace period, when it is reaped.

A peer's *value* is the sum of its plain tags and its decaying values; it is kept up to date
on every change, never recomputed. When a peer's last connection goes, its entry goes with its
tags and decaying values. *Protection* is kept apart from entries: a protected peer stays
protected across disconnects until every protection tag is removed.

*Grace* starts when a peer's entry becomes real (its first connection of the current run), not
when it was first tagged. A peer is *eligible* for trimming when it is not protected, not in
grace, and has at least one connection that is not already being closed.

A trim changes the table in two ways only: `mark_closing` takes the chosen connections out of
the counts at once (so no later trim picks them again), and `unmark_closing` puts back a
connection whose close failed. Removing a closed connection is the same `remove_conn` that a
`disconnected` notification causes.

Representation: a peer has a handful of connections and tags, so an entry keeps them in
small sequences rather than in two dicts (which would cost some 400 bytes a peer; see the M4
figure of benchmarks/bench.py). `PeerEntry.conn_times` is an immutable tuple `(conn, opened,
conn, opened, ...)`, replaced on every change; connections never equal a number, so a scan
for a connection (`in`, `index`) can only stop at a connection. The plain tags are two
parallel sequences, a tuple of names `tag_names` (replaced when a name comes or goes) and a
list of values `tag_values` (changed in place when a value changes); a peer with no tag has
`()` for both. `PeerEntry.conns` and `PeerEntry.tags` build dicts from them for readers
(policies, `tag_info`). A real entry holds at least one connection for exactly as long as it
is in the table: `remove_conn` empties `conn_times` when it drops the entry. A connection
must be hashable (the connections being closed are kept in a set); `add_conn` checks it first.

Time: the table never reads a clock. A method that may need the time takes `now`, a
zero-argument function that it calls only when it creates an entry or records a decaying
value, so tagging a known peer costs no clock read. Everything here is synchronous: on one
event loop every method is atomic, so no locks are needed.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from ._decay import DecayingTag, DecayingValue, DecaySchedule
from ._models import TagInfo, Victim
from ._policy import DefaultPolicy, TrimPolicy
from .abc import Conn, Direction, PeerId

__all__ = ["PeerEntry", "PeerTable", "TrimPlan"]

Now = Callable[[], float]

_OUTBOUND = Direction.OUTBOUND
_LAST = operator.itemgetter(-1)


class PeerEntry:
    """One peer: its connections, tags and value. Implements `Candidate`.

    `conn_times` is `(conn, opened, conn, opened, ...)`, `tag_names` and `tag_values` the
    plain tags (see the module docstring); `conns` and `tags` are dict snapshots of them.
    """

    __slots__ = (
        "closing",
        "conn_times",
        "first_seen",
        "outbound",
        "peer",
        "seq",
        "tag_names",
        "tag_values",
        "value",
    )

    def __init__(self, peer: PeerId, first_seen: float, seq: int) -> None:
        self.peer = peer
        self.first_seen = first_seen
        self.seq = seq
        self.conn_times: tuple[Any, ...] = ()
        self.tag_names: tuple[str, ...] = ()
        self.tag_values: Any = ()  # a list of ints, parallel to `tag_names`; () if none
        self.value = 0
        self.outbound = 0
        self.closing = 0

    @property
    def temp(self) -> bool:
        """A temporary entry: tagged, never connected (a real one has a connection)."""
        return not self.conn_times

    @property
    def conns(self) -> dict[Conn, float]:
        """The open connections and the time each was reported open (a new dict)."""
        flat = self.conn_times
        return dict(zip(flat[::2], flat[1::2], strict=True))

    @property
    def tags(self) -> dict[str, int]:
        """The plain tags (a new dict)."""
        return dict(zip(self.tag_names, self.tag_values, strict=True))

    def __repr__(self) -> str:
        kind = "temporary " if self.temp else ""
        conns = len(self.conn_times) >> 1
        return f"<{kind}PeerEntry {self.peer!r} value={self.value} conns={conns}>"


@attrs.frozen(slots=True)
class TrimPlan:
    """What a trim should do, decided from the state at one moment.

    `conns` lists the connections to close, peer by peer in policy order; `next_grace_expiry`
    is the earliest time a peer now in grace becomes eligible (None if no peer is in grace).
    `chosen` holds `(peer, value, connections)` of each victim at the time of the plan;
    `victims` makes `Victim` records of them, later, once the closes have started. `owners`
    holds the entry of each connection of `conns`, for `PeerTable.mark_planned`.
    """

    target: int
    eligible: int
    chosen: tuple[tuple[PeerId, int, int], ...]
    conns: tuple[Conn, ...]
    next_grace_expiry: float | None
    owners: tuple[PeerEntry, ...] = attrs.field(default=(), repr=False, eq=False)

    @property
    def victims(self) -> tuple[Victim, ...]:
        return tuple(Victim(peer, value, conns) for peer, value, conns in self.chosen)


class PeerTable:
    """The sans-IO state of a connection manager (see the module docstring)."""

    def __init__(self, grace_period: float) -> None:
        self.grace_period = grace_period
        self._peers: dict[PeerId, PeerEntry] = {}
        self._temp: dict[PeerId, PeerEntry] = {}  # ordered by creation time
        self._protected: dict[PeerId, set[str]] = {}
        self._closing: set[Conn] = set()
        self._schedules: dict[str, DecaySchedule] = {}
        self._conn_total = 0
        self._seq = 0

    # -- counts -------------------------------------------------------------------------

    @property
    def conn_count(self) -> int:
        """Open connections, not counting those being closed."""
        return self._conn_total - len(self._closing)

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

    def lookup(self, peer: PeerId) -> PeerEntry | None:
        """The peer's entry, real or temporary. Raises TypeError for an unhashable peer."""
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._temp.get(peer)
        return entry

    # -- connections ----------------------------------------------------------------------

    def add_conn(self, conn: Conn, now: float) -> bool:
        """Records an open connection; False (and no change) if it is already known.

        Raises (and changes nothing) if the connection is unhashable or its attributes fail.
        """
        hash(conn)
        peer = conn.remote_peer
        outbound = conn.direction is _OUTBOUND
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._temp.pop(peer, None) if self._temp else None
            if entry is None:
                self._seq += 1
                entry = PeerEntry(peer, now, self._seq)
            else:
                entry.first_seen = now  # grace starts at the connection, not the early tag
            entry.conn_times = (conn, now)
            self._peers[peer] = entry
        elif conn in entry.conn_times:
            return False
        else:
            entry.conn_times += (conn, now)
        if outbound:
            entry.outbound += 1
        self._conn_total += 1
        return True

    def remove_conn(self, conn: Conn) -> bool:
        """Forgets a connection; the peer goes with its last one. False if it is unknown."""
        entry = self._peers.get(conn.remote_peer)
        if entry is None:
            return False
        flat = entry.conn_times
        if conn not in flat:
            return False
        outbound = conn.direction is _OUTBOUND
        self._conn_total -= 1
        if entry.closing and conn in self._closing:
            self._closing.discard(conn)
            entry.closing -= 1
        if outbound:
            entry.outbound -= 1
        if len(flat) == 2:
            entry.conn_times = ()
            del self._peers[entry.peer]
            if self._schedules:
                self._drop_decaying(entry.peer)
        elif len(flat) == 4:  # the common case of a peer with two connections
            entry.conn_times = flat[2:] if flat.index(conn) == 0 else flat[:2]
        else:
            at = flat.index(conn)
            entry.conn_times = flat[:at] + flat[at + 2 :]
        return True

    def has_conn(self, conn: Conn) -> bool:
        entry = self._peers.get(conn.remote_peer)
        return entry is not None and conn in entry.conn_times

    def mark_closing(self, conn: Conn) -> bool:
        """Takes a connection out of the counts while a trim closes it."""
        entry = self._peers.get(conn.remote_peer)
        if entry is None or conn not in entry.conn_times or conn in self._closing:
            return False
        self._closing.add(conn)
        entry.closing += 1
        return True

    def mark_planned(self, plan: TrimPlan) -> list[Conn]:
        """`mark_closing` of each of `plan.conns`, in order; returns those it marked.

        The plan knows each connection's entry, so no peer id is looked up again (at 100,000
        connections that is most of the cost of marking; a py-libp2p ID hashes in Python).
        """
        closing = self._closing
        marked: list[Conn] = []
        for conn, entry in zip(plan.conns, plan.owners, strict=True):
            if conn not in entry.conn_times:  # the entry changed since: the general path
                if self.mark_closing(conn):
                    marked.append(conn)
            elif conn not in closing:
                closing.add(conn)
                entry.closing += 1
                marked.append(conn)
        return marked

    def unmark_closing(self, conn: Conn) -> bool:
        """Puts back a connection whose close did not happen (failed, timed out, cut short)."""
        if conn not in self._closing:
            return False
        self._closing.discard(conn)
        entry = self._peers[conn.remote_peer]
        entry.closing -= 1
        return True

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
            values[at] = value
        else:
            # New sequences of exactly the new size: `append` and `[*values, value]` would
            # over-allocate the list (room for 8 once it holds 2), and peers keep few tags.
            entry.tag_names = names + (tag,)  # noqa: RUF005 - one allocation, not two
            entry.tag_values = entry.tag_values + [value] if names else [value]  # noqa: RUF005
            entry.value += value
        return created

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        entry = self.lookup(peer)
        if entry is not None:
            names = entry.tag_names
            if tag in names:
                at = names.index(tag)
                values = entry.tag_values
                entry.value -= values[at]
                if len(names) == 1:
                    entry.tag_names = entry.tag_values = ()
                else:
                    entry.tag_names = names[:at] + names[at + 1 :]
                    del values[at]

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
        if entry.tag_names is not names or not entry.conn_times:
            # `fn` changed this peer's tags (or disconnected it), or the entry is temporary:
            # the general path. (A real entry holds a connection while in the table.)
            return self.tag_peer(peer, tag, new, now)
        values = entry.tag_values
        if at >= 0:
            entry.value += new - values[at]
            values[at] = new
        else:  # as in `tag_peer`
            entry.tag_names = names + (tag,)  # noqa: RUF005
            entry.tag_values = values + [new] if names else [new]  # noqa: RUF005
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

    # -- protection -----------------------------------------------------------------------

    def protect(self, peer: PeerId, tag: str) -> None:
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

    def plan_trim(self, now: float, low_water: int, policy: TrimPolicy) -> TrimPlan:
        """Chooses victims: the shortest prefix of the policy order covering the target.

        The target is the number of eligible connections above `low_water`. Pure: the table
        is not changed; the caller marks the chosen connections closing.
        """
        peers = self._peers
        # Protected entries, found by peer once: testing each entry by identity is cheaper
        # than hashing every peer id (a py-libp2p ID hashes in Python).
        protected = {peers[peer] for peer in self._protected if peer in peers}
        grace = self.grace_period
        cutoff = now - grace
        candidates: list[PeerEntry] = []
        eligible = 0
        next_grace: float | None = None
        for entry in peers.values():
            first_seen = entry.first_seen
            if first_seen > cutoff:
                if entry not in protected:
                    expiry = first_seen + grace
                    if next_grace is None or expiry < next_grace:
                        next_grace = expiry
                continue
            if entry in protected:
                continue
            open_conns = (len(entry.conn_times) >> 1) - entry.closing
            if open_conns <= 0:
                continue
            candidates.append(entry)
            eligible += open_conns
        target = eligible - low_water
        if target <= 0:
            return TrimPlan(max(target, 0), eligible, (), (), next_grace)

        ordered: Iterable[PeerEntry]
        if type(policy) is DefaultPolicy:
            # The default order starts with the value, so no peer valued above the value at
            # which the connections reach the target can be chosen: key and sort only the
            # others, in one pass without a call per candidate. The last item of each key is
            # the entry, never compared since the keys before it end with the unique -seq.
            keyed = _default_keys(candidates, _value_reaching(candidates, target))
            keyed.sort()
            ordered = map(_LAST, keyed)
        elif target * 8 < len(candidates):
            # Every candidate holds at least one connection: `target` peers always suffice.
            ordered = heapq.nsmallest(target, candidates, key=policy.sort_key)
        else:
            ordered = sorted(candidates, key=policy.sort_key)

        chosen: list[tuple[PeerId, int, int]] = []
        conns: list[Conn] = []
        owners: list[PeerEntry] = []
        covered = 0
        closing = self._closing
        for entry in ordered:
            closable: Sequence[Conn] = entry.conn_times[::2]
            if entry.closing:
                closable = [conn for conn in closable if conn not in closing]
            count = len(closable)
            chosen.append((entry.peer, entry.value, count))
            conns += closable
            owners += [entry] * count
            covered += count
            if covered >= target:
                break
        return TrimPlan(target, eligible, tuple(chosen), tuple(conns), next_grace, tuple(owners))

    # -- checks ---------------------------------------------------------------------------

    def _check_invariants(self) -> None:
        """Asserts every internal consistency rule; for tests."""
        total = 0
        seen_closing = 0
        default = DefaultPolicy()
        for peer, entry in self._peers.items():
            assert entry.peer == peer
            assert not entry.temp
            _check_flat(entry)
            conns = entry.conn_times[::2]
            assert conns, f"{entry!r} has no connection but is not temporary"
            assert peer not in self._temp
            total += len(conns)
            closing_here = sum(1 for conn in conns if conn in self._closing)
            assert entry.closing == closing_here, entry
            seen_closing += closing_here
            outbound = sum(1 for conn in conns if conn.direction is Direction.OUTBOUND)
            assert entry.outbound == outbound, entry
            assert all(conn.remote_peer == peer for conn in conns)
            assert _default_keys([entry], None)[0][:-1] == default.sort_key(entry), "keys differ"
        assert total == self._conn_total, (total, self._conn_total)
        assert seen_closing == len(self._closing), "a closing connection is not in the table"
        previous = None
        for peer, entry in self._temp.items():
            assert entry.peer == peer
            assert entry.temp
            _check_flat(entry)
            assert entry.conn_times == ()
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


def _fn_result(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"fn must return an int, not {type(value).__name__}")
    return value


def _mostly_gone(removed: int, left: int) -> bool:
    """Whether a dict that lost `removed` keys and holds `left` is worth copying."""
    return removed >= 1024 and removed > 2 * left


def _value_reaching(candidates: list[PeerEntry], target: int) -> int:
    """The lowest value such that the candidates valued at most it hold `target` open
    connections (0 < `target` <= what all of them hold)."""
    conns_at: dict[int, int] = {}
    for entry in candidates:
        value = entry.value
        conns_at[value] = conns_at.get(value, 0) + (len(entry.conn_times) >> 1) - entry.closing
    covered = 0
    for value in sorted(conns_at):
        covered += conns_at[value]
        if covered >= target:
            break
    return value


def _default_keys(candidates: list[PeerEntry], max_value: int | None) -> list[tuple[Any, ...]]:
    """`DefaultPolicy.sort_key(entry) + (entry,)` for each candidate valued at most
    `max_value` (None: every one), without a call per candidate.

    `_check_invariants` checks that both keys agree.
    """
    keyed: list[tuple[Any, ...]] = []
    append = keyed.append
    for entry in candidates:
        if max_value is not None and entry.value > max_value:
            continue
        flat = entry.conn_times
        streams = flat[0].num_streams  # a candidate has a connection
        if len(flat) > 2:
            for conn in flat[2::2]:
                streams += conn.num_streams
        append(
            (
                entry.value,
                streams > 0,
                entry.outbound > 0,
                streams,
                -entry.first_seen,
                -entry.seq,
                entry,
            )
        )
    return keyed


def _check_flat(entry: PeerEntry) -> None:
    """The layouts of `conn_times` and of the tags (see the module docstring)."""
    flat = entry.conn_times
    assert type(flat) is tuple, entry
    assert len(flat) % 2 == 0, entry
    conns = flat[::2]
    assert all(isinstance(opened, (int, float)) for opened in flat[1::2]), entry
    assert len({id(conn) for conn in conns}) == len(conns), f"{entry!r}: duplicate connection"
    assert all(not isinstance(conn, (int, float)) for conn in conns), entry
    names, values = entry.tag_names, entry.tag_values
    assert type(names) is tuple, entry
    assert all(isinstance(name, str) and name for name in names), entry
    assert len(set(names)) == len(names), f"{entry!r}: duplicate tag"
    if names:
        assert type(values) is list, entry
    else:
        assert values == (), entry
    assert len(values) == len(names), entry
    assert all(type(value) is int for value in values), entry
