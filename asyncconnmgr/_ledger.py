"""The ledger: what the host reported and what the trims did, applied to the table. No I/O.

Two kinds of fact reach the table: the host's notifications (`connected`, `disconnected`),
in batches taken from the queue, and the outcome of each close a trim made. The ledger
applies both, and owns the rules that make them agree:

- a connection that ended (reported disconnected, or closed by a trim) is remembered, so a
  late or repeated `connected` for the same object does not resurrect it;
- a connection a trim closed is remembered until the host confirms it with `disconnected`,
  which is then expected rather than counted as unknown (until then that memory is the
  one that says it ended; the confirmation moves it to the memory of ended connections);
- every notification that changes nothing (a duplicate, a late one, one for an unknown
  connection, one that raised, one after `aclose()`) is counted in `ignored`.

Both memories hold connections weakly (`ConnMemory`): the manager keeps no ended connection
alive. An object that cannot be weakly referenced is held strongly instead, in a bounded
ring, so a host whose connection class has `__slots__` without `__weakref__` still gets the
rules, at the price of keeping up to `limit` such objects alive.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import Final
from weakref import getweakrefcount

from ._table import PeerEntry, PeerTable
from .abc import Conn

__all__ = ["REMEMBERED_CLOSES", "REMEMBERED_ENDED", "ConnMemory", "Ledger"]

logger = logging.getLogger("asyncconnmgr.ledger")

#: How many connections closed by a trim are remembered until the host confirms them.
REMEMBERED_CLOSES: Final = 65_536
#: How many ended connections are remembered, against a late or repeated `connected`.
REMEMBERED_ENDED: Final = 16_384


def _consume(iterator: Iterator[object]) -> None:
    """Runs an iterator to its end, in C, keeping nothing."""
    deque(iterator, maxlen=0)


class ConnMemory:
    """A bounded set of connections that keeps none of them alive (where it can).

    `_live` holds a weak reference to each remembered connection still alive. Every
    reference is made with `_live.discard` as its callback, so a connection's death takes
    its reference out at once (in C, with no Python frame): what the memory holds follows
    the remembered connections still alive, not how many have passed through. `_ring` holds
    the references of the last `limit` additions, in the order they came; each addition
    beyond the limit overwrites the oldest slot and forgets its connection. So an addition is
    O(1), and once the ring is full its size stays the same however many connections pass
    through. Objects that cannot be weakly referenced go to `_strong`, a dict kept under the
    same bound.

    A reference compares as its connection while both are alive, so membership is the
    table's own (a connection is a dict key there too).
    """

    __slots__ = ("_limit", "_live", "_next", "_ring", "_strong")

    def __init__(self, limit: int) -> None:
        self._live: set[weakref.ref[Conn]] = set()
        self._strong: dict[Conn, None] = {}
        self._ring: list[weakref.ref[Conn]] = []
        self._limit = limit
        self._next = 0

    def add(self, conn: Conn) -> None:
        self.add_many((conn,))

    def add_many(self, conns: Sequence[Conn]) -> None:
        """Remembers connections (the per-item work is in C: this runs for every
        `disconnected` the host reports)."""
        forget = self._live.discard
        try:
            refs = list(map(weakref.ref, conns, repeat(forget)))
        except TypeError:  # some cannot be weakly referenced: the strong memory takes them
            weakable = [conn for conn in conns if _weakable(conn)]
            for conn in conns:
                if not _weakable(conn):
                    self._add_strong(conn)
            refs = list(map(weakref.ref, weakable, repeat(forget)))
        self._live.update(refs)
        # One slot per addition, even for a connection already remembered: the ring fills
        # at the pace of the churn. Evicting a slot forgets its connection, so one added
        # twice may be forgotten before `limit` newer additions; never a live one that was
        # added only once.
        self._track(refs)

    def _add_strong(self, conn: Conn) -> None:
        strong = self._strong
        if conn in strong:
            return
        if len(strong) >= self._limit:
            del strong[next(iter(strong))]
        strong[conn] = None

    def _track(self, refs: list[weakref.ref[Conn]]) -> None:
        ring = self._ring
        room = self._limit - len(ring)
        if room > 0:
            ring.extend(refs[:room])
            refs = refs[room:]
        forget = self._live.discard
        at = self._next
        while refs:
            chunk = refs[: self._limit - at]
            end = at + len(chunk)
            evicted = ring[at:end]
            ring[at:end] = chunk
            _consume(map(forget, evicted))
            refs = refs[len(chunk) :]
            at = end if end < self._limit else 0
        self._next = at

    def __contains__(self, conn: object) -> bool:
        live = self._live
        if live and getweakrefcount(conn) and weakref.ref(conn) in live:
            return True
        return bool(self._strong) and conn in self._strong

    def discard(self, conn: Conn) -> bool:
        """Forgets `conn`; True if it was remembered.

        Its ring slot is left to be overwritten in turn (the manager discards only
        confirmations of its own closes, and a closed connection is never closed again).
        """
        live = self._live
        if live and getweakrefcount(conn):  # zero for an object that cannot have any
            ref = weakref.ref(conn)
            if ref in live:
                live.remove(ref)
                return True
        return self._strong.pop(conn, False) is None

    def __bool__(self) -> bool:
        return bool(self._live) or bool(self._strong)

    def __len__(self) -> int:
        return len(self._live) + len(self._strong)

    def alive(self) -> list[Conn]:
        """The remembered connections still alive; for tests."""
        live = [ref() for ref in self._live]
        return [conn for conn in live if conn is not None] + list(self._strong)


def _weakable(conn: object) -> bool:
    try:
        weakref.ref(conn)
    except TypeError:
        return False
    return True


class Ledger:
    """Applies notifications and close outcomes to a `PeerTable` (see the module docstring).

    `regrown` is set when a `connected` adds to the connections of a peer that is out of
    grace, or a new peer arrives while the table keeps a grace budget: trimming may have
    become possible although the last trim found nobody to close. The manager clears it.
    """

    def __init__(self, table: PeerTable) -> None:
        self.table = table
        self.ended = ConnMemory(REMEMBERED_ENDED)
        self.unconfirmed = ConnMemory(REMEMBERED_CLOSES)
        self.ignored = 0
        self.regrown = False
        # Closed by the trim in flight, not yet in the memories (see `settle`).
        self._recent: list[Conn] = []  # each once: it left the table

    def apply(self, items: deque[tuple[bool, Conn]], now: float) -> None:
        """Applies every notification in `items` (emptying it), in order, in one batch."""
        self.settle()
        table = self.table
        add_conn = table.add_conn
        remove_conn = table.remove_conn
        ended = self.ended
        # `conn in ended or conn in unconfirmed`, inline (see `ConnMemory.__contains__`):
        # this runs per `connected`. A connection a trim closed is in `unconfirmed` only,
        # until its `disconnected` moves it to `ended`.
        live = ended._live
        closed_live = self.unconfirmed._live
        strong = ended._strong
        closed_strong = self.unconfirmed._strong
        ref = weakref.ref
        weakrefs = getweakrefcount
        # Ended in this batch: not in `ended` yet, and must not get back in the table either.
        ended_now: dict[Conn, None] = {}
        cutoff = now - table.grace_period
        budget = table.grace_budget is not None
        popleft = items.popleft
        while items:
            connected, conn = popleft()
            try:
                if connected:
                    if (live or closed_live) and weakrefs(conn):
                        known = ref(conn)
                        if known in live or known in closed_live:
                            self.ignore("connected after it ended", conn)
                            continue
                    if (
                        (ended_now and conn in ended_now)
                        or (strong and conn in strong)
                        or (closed_strong and conn in closed_strong)
                    ):
                        self.ignore("connected after it ended", conn)
                        continue
                    entry = add_conn(conn, now)
                    if entry is None:
                        self.ignore("duplicate connected", conn)
                    elif budget or entry.first_seen <= cutoff:
                        self.regrown = True
                elif remove_conn(conn) is not None:
                    ended_now[conn] = None
                else:
                    ended_now[conn] = None
                    if not self._confirmed(conn):
                        self.ignore("disconnected for an unknown connection", conn)
            except Exception:
                self.ignored += 1
                logger.exception("asyncconnmgr could not apply a notification for %r", conn)
        if ended_now:
            ended.add_many(list(ended_now))

    def _confirmed(self, conn: Conn) -> bool:
        """The host confirming a close a trim made: expected, not counted."""
        unconfirmed = self.unconfirmed
        return bool(unconfirmed) and unconfirmed.discard(conn)

    def ignore(self, why: str, conn: Conn) -> None:
        self.ignored += 1
        logger.debug("asyncconnmgr ignored a notification (%s): %r", why, conn)

    def ignore_after_close(self, conn: Conn) -> None:
        self.ignored += 1
        logger.debug("notification after aclose() ignored: %r", conn)

    def close_completed(self, conn: Conn) -> PeerEntry | None:
        """A trim closed `conn` (or aborted it): it leaves the table; the host's later
        `disconnected` for it is expected."""
        entry = self.table.remove_conn(conn)
        if entry is not None:
            self._recent.append(conn)
        return entry

    def settle(self) -> None:
        """Moves the connections trims closed into `unconfirmed`, in one batch (a trim may
        close thousands at a stretch; nothing reads the memories until `apply`). They count
        as ended while they are there: one memory, one weak reference each."""
        if self._recent:
            closed = self._recent
            self._recent = []
            self.unconfirmed.add_many(closed)

    def close_not_done(self, conn: Conn) -> None:
        """A close failed, timed out or was spared: `conn` stays, counted."""
        self.table.unmark_closing(conn)

    def closes_not_started(self, conns: Iterable[Conn]) -> None:
        """The closes a trim never started (a deadline, every caller gone): they stay,
        counted."""
        self.table.unmark_many(conns)

    def _check_invariants(self) -> None:
        """Asserts the ledger's rules against the table; for tests."""
        self.table._check_invariants()
        for conn in self._recent:
            assert self.table.entry_of(conn) is None, f"closed {conn!r} is in the table"
        for conn in self.ended.alive():
            assert self.table.entry_of(conn) is None, f"ended {conn!r} is in the table"
        for conn in self.unconfirmed.alive():
            assert self.table.entry_of(conn) is None, f"closed {conn!r} is in the table"
        assert len(self.ended._ring) <= self.ended._limit
        assert len(self.unconfirmed._ring) <= self.unconfirmed._limit
        assert self.ignored >= 0
