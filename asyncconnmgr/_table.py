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

Time: the table never reads a clock. A method that may need the time takes `now`, a
zero-argument function that it calls only when it creates an entry or records a decaying
value, so tagging a known peer costs no clock read. Everything here is synchronous: on one
event loop every method is atomic, so no locks are needed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ._decay import DecayingTag, DecayingValue, DecaySchedule
from ._models import TagInfo, Victim
from ._policy import TrimPolicy
from .abc import Conn, Direction, PeerId

__all__ = ["PeerEntry", "PeerTable", "TrimPlan"]

Now = Callable[[], float]


class PeerEntry:
    """One peer: its connections, tags and value. Implements `Candidate`."""

    __slots__ = (
        "closing",
        "conns",
        "first_seen",
        "outbound",
        "peer",
        "seq",
        "tags",
        "temp",
        "value",
    )

    def __init__(self, peer: PeerId, first_seen: float, seq: int, *, temp: bool) -> None:
        self.peer = peer
        self.first_seen = first_seen
        self.seq = seq
        self.temp = temp
        self.conns: dict[Conn, float] = {}
        self.tags: dict[str, int] = {}
        self.value = 0
        self.outbound = 0
        self.closing = 0

    def __repr__(self) -> str:
        kind = "temporary " if self.temp else ""
        return f"<{kind}PeerEntry {self.peer!r} value={self.value} conns={len(self.conns)}>"


@attrs.frozen(slots=True)
class TrimPlan:
    """What a trim should do, decided from the state at one moment.

    `conns` lists the connections to close, peer by peer in policy order; `next_grace_expiry`
    is the earliest time a peer now in grace becomes eligible (None if no peer is in grace).
    """

    target: int
    eligible: int
    victims: tuple[Victim, ...]
    conns: tuple[Conn, ...]
    next_grace_expiry: float | None


_NO_PLAN_VICTIMS: tuple[Victim, ...] = ()


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

    def peers(self) -> Iterator[PeerEntry]:
        """The real entries (peers with at least one connection)."""
        return iter(self._peers.values())

    # -- connections ----------------------------------------------------------------------

    def add_conn(self, conn: Conn, now: float) -> bool:
        """Records an open connection; False (and no change) if it is already known."""
        peer = conn.remote_peer
        outbound = conn.direction is Direction.OUTBOUND
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._temp.pop(peer, None)
            if entry is None:
                entry = PeerEntry(peer, now, self._next_seq(), temp=False)
            else:
                entry.temp = False
                entry.first_seen = now  # grace starts at the connection, not the early tag
            self._peers[peer] = entry
        elif conn in entry.conns:
            return False
        entry.conns[conn] = now
        if outbound:
            entry.outbound += 1
        self._conn_total += 1
        return True

    def remove_conn(self, conn: Conn) -> bool:
        """Forgets a connection; the peer goes with its last one. False if it is unknown."""
        entry = self._peers.get(conn.remote_peer)
        if entry is None or entry.conns.pop(conn, None) is None:
            return False
        self._conn_total -= 1
        if entry.closing and conn in self._closing:
            self._closing.discard(conn)
            entry.closing -= 1
        if conn.direction is Direction.OUTBOUND:
            entry.outbound -= 1
        if not entry.conns:
            del self._peers[entry.peer]
            self._drop_decaying(entry.peer)
        return True

    def has_conn(self, conn: Conn) -> bool:
        entry = self._peers.get(conn.remote_peer)
        return entry is not None and conn in entry.conns

    def is_closing(self, conn: Conn) -> bool:
        return conn in self._closing

    def mark_closing(self, conn: Conn) -> bool:
        """Takes a connection out of the counts while a trim closes it."""
        entry = self._peers.get(conn.remote_peer)
        if entry is None or conn not in entry.conns or conn in self._closing:
            return False
        self._closing.add(conn)
        entry.closing += 1
        return True

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
                entry = PeerEntry(peer, now(), self._next_seq(), temp=True)
                self._temp[peer] = entry
        return entry

    def tag_peer(self, peer: PeerId, tag: str, value: int, now: Now) -> None:
        """Sets (not adds) the tag's value; an unknown peer gets a temporary entry."""
        entry = self._entry_for_tagging(peer, now)
        tags = entry.tags
        entry.value += value - tags.get(tag, 0)
        tags[tag] = value

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        entry = self.lookup(peer)
        if entry is not None:
            old = entry.tags.pop(tag, None)
            if old is not None:
                entry.value -= old

    def upsert_tag(self, peer: PeerId, tag: str, fn: Callable[[int], int], now: Now) -> None:
        """Sets the tag to `fn(current value or 0)`.

        `fn` runs before anything changes and may call back into the table; if it raises, or
        returns something that is not an int, nothing changes.
        """
        entry = self.lookup(peer)
        new = fn(entry.tags.get(tag, 0) if entry is not None else 0)
        if type(new) is not int:
            raise TypeError(f"fn must return an int, not {type(new).__name__}")
        self.tag_peer(peer, tag, new, now)

    def tag_info(self, peer: PeerId) -> TagInfo | None:
        entry = self.lookup(peer)
        if entry is None:
            return None
        tags = dict(entry.tags)
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
        for peer in stale:
            del self._temp[peer]
            self._drop_decaying(peer)
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

    def decaying_value(self, tag: DecayingTag, peer: PeerId) -> DecayingValue | None:
        schedule = self._schedules.get(tag.name)
        return None if schedule is None else schedule.values.get(peer)

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
        protected = self._protected
        closing_any = bool(self._closing)
        grace = self.grace_period
        cutoff = now - grace
        candidates: list[PeerEntry] = []
        eligible = 0
        next_grace: float | None = None
        for entry in self._peers.values():
            if entry.peer in protected:
                continue
            if entry.first_seen > cutoff:
                expiry = entry.first_seen + grace
                if next_grace is None or expiry < next_grace:
                    next_grace = expiry
                continue
            open_conns = len(entry.conns) - entry.closing
            if open_conns <= 0:
                continue
            candidates.append(entry)
            eligible += open_conns
        target = eligible - low_water
        if target <= 0:
            return TrimPlan(max(target, 0), eligible, _NO_PLAN_VICTIMS, (), next_grace)

        key = policy.sort_key
        # Every candidate holds at least one connection, so `target` peers always suffice.
        ordered: list[Any]
        if target * 8 < len(candidates):
            ordered = heapq.nsmallest(target, candidates, key=key)
        else:
            ordered = sorted(candidates, key=key)

        victims: list[Victim] = []
        conns: list[Conn] = []
        covered = 0
        closing = self._closing
        for entry in ordered:
            if closing_any and entry.closing:
                chosen = [conn for conn in entry.conns if conn not in closing]
            else:
                chosen = list(entry.conns)
            victims.append(Victim(entry.peer, entry.value, len(chosen)))
            conns.extend(chosen)
            covered += len(chosen)
            if covered >= target:
                break
        return TrimPlan(target, eligible, tuple(victims), tuple(conns), next_grace)

    # -- checks ---------------------------------------------------------------------------

    def _check_invariants(self) -> None:
        """Asserts every internal consistency rule; for tests."""
        total = 0
        seen_closing = 0
        for peer, entry in self._peers.items():
            assert entry.peer == peer
            assert not entry.temp
            assert entry.conns, f"{entry!r} has no connection but is not temporary"
            assert peer not in self._temp
            total += len(entry.conns)
            closing_here = sum(1 for conn in entry.conns if conn in self._closing)
            assert entry.closing == closing_here, entry
            seen_closing += closing_here
            outbound = sum(1 for conn in entry.conns if conn.direction is Direction.OUTBOUND)
            assert entry.outbound == outbound, entry
            assert all(conn.remote_peer == peer for conn in entry.conns)
        assert total == self._conn_total, (total, self._conn_total)
        assert seen_closing == len(self._closing), "a closing connection is not in the table"
        previous = None
        for peer, entry in self._temp.items():
            assert entry.peer == peer
            assert entry.temp
            assert not entry.conns
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
