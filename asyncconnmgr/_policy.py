"""Choosing victims: the order in which a trim closes its candidates.

A policy is a pure function of the candidates' snapshots: `select(candidates, target, now)`
returns them in closing order, and the table closes the shortest prefix of that order whose
connections cover `target`. A policy never sees a protected peer, nor a connection already
being closed; it may return a prefix only (the rest is then never closed by this trim).

Snapshots are read once per trim, before the policy runs (stream counts are live values:
the reference sorts with comparators that re-read shared state under locks while the sort
runs, so its order is neither total nor repeatable).

A v0.1 policy, with only `sort_key(candidate)`, still works: `as_policy` wraps it in
`SortKeyPolicy`, which closes candidates in increasing key order, each key computed once.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._config import check_policy
from .abc import Conn, PeerId

if TYPE_CHECKING:
    from ._models import CandidateConn

__all__ = [
    "Candidate",
    "DefaultPolicy",
    "SortKeyPolicy",
    "SortKeyTrimPolicy",
    "TrimPolicy",
    "as_policy",
    "default_key",
]

_LAST = operator.itemgetter(-1)


class Candidate(Protocol):
    """The read-only view of a peer that a policy may use."""

    @property
    def peer(self) -> PeerId:
        """The peer's id, as the host reported it in `Conn.remote_peer`."""
        ...

    @property
    def value(self) -> int:
        """The sum of the peer's tags and decaying tags."""
        ...

    @property
    def first_seen(self) -> float:
        """When the peer's current run of connections began (its grace period's start)."""
        ...

    @property
    def conns(self) -> Mapping[Conn, float]:
        """Open connections and the time each was reported open."""
        ...

    @property
    def connections(self) -> Sequence[CandidateConn]:
        """Each connection with its direction, streams, `remote_addr` and open time."""
        ...

    @property
    def open_conns(self) -> int:
        """Connections this trim may close (open and not already being closed)."""
        ...

    @property
    def streams(self) -> int:
        """Open streams over all the peer's connections, read once for this trim."""
        ...

    @property
    def outbound(self) -> int:
        """How many of the peer's connections this host dialled."""
        ...

    @property
    def seq(self) -> int:
        """A number unique to the entry, increasing with creation: the final tie-breaker."""
        ...


@runtime_checkable
class TrimPolicy(Protocol):
    """Orders a trim's candidates: the first returned is closed first."""

    def select(
        self, candidates: Sequence[Candidate], target: int, now: float
    ) -> Iterable[Candidate]:
        """The candidates in closing order (a prefix suffices once it covers `target`
        connections), as a pure function of the snapshots: it runs synchronously while the
        trim plans, and must not change the manager.

        Must return the objects it was given: anything else makes the trim raise TypeError
        (`trim_open_conns()` raises it; a background trim logs it as a trimmer failure). An
        exception `select` raises reaches the trim the same way, and nothing is closed.
        """
        ...


@runtime_checkable
class SortKeyTrimPolicy(Protocol):
    """The v0.1 policy protocol: a key per candidate, smallest closed first."""

    def sort_key(self, candidate: Candidate) -> Any:
        """The candidate's key: candidates with smaller keys are closed first."""
        ...


def default_key(candidate: Candidate) -> tuple[int, bool, bool, int, float, int]:
    """The default order, lowest first: value; idle peers (no open stream) before busy ones;
    peers that only dialled us before peers we dialled; fewer streams; the youngest
    (long-lived peers have proven themselves); and, for a total order, the most recently
    created entry."""
    streams = candidate.streams
    return (
        candidate.value,
        streams > 0,
        candidate.outbound > 0,
        streams,
        -candidate.first_seen,
        -candidate.seq,
    )


class DefaultPolicy:
    """Closes the least valuable peers first, in the order of `default_key`."""

    __slots__ = ()

    def sort_key(self, candidate: Candidate) -> tuple[int, bool, bool, int, float, int]:
        """The candidate's place in the order: `default_key`."""
        return default_key(candidate)

    def reason(self, candidate: Candidate) -> tuple[int, bool, bool, int, float, int]:
        """Why a victim was chosen: its key."""
        return default_key(candidate)

    def select(
        self, candidates: Sequence[Candidate], target: int, now: float
    ) -> Iterable[Candidate]:
        """The `candidates` in `default_key` order, those that cannot be needed left out:
        a peer valued above the value at which the cheaper ones cover `target` (a number of
        connections) is never chosen, so it is neither keyed nor sorted. `now` is the
        manager's clock, unused by this order. Returns nothing for a `target` of 0 or less;
        raises nothing of its own."""
        if target <= 0 or not candidates:
            return ()
        # The order starts with the value, so no peer valued above the value at which the
        # connections reach the target can be chosen: key and sort only the others, in one
        # pass without a call per candidate. The last item of each key is the candidate,
        # never compared since the keys before it end with the unique -seq.
        ceiling = _value_reaching(candidates, target)
        keyed = [
            (
                c.value,
                c.streams > 0,
                c.outbound > 0,
                c.streams,
                -c.first_seen,
                -c.seq,
                c,
            )
            for c in candidates
            if c.value <= ceiling
        ]
        keyed.sort()
        return map(_LAST, keyed)

    def __repr__(self) -> str:
        return "DefaultPolicy()"


class SortKeyPolicy:
    """Adapts a v0.1 `sort_key` policy to `select`: increasing key order, each key computed
    once. The keys of the last `select` are kept (until the next one) as the victims'
    `reason`, so the wrapped policy is never asked twice."""

    __slots__ = ("_keys", "wrapped")

    def __init__(self, wrapped: SortKeyTrimPolicy) -> None:
        self.wrapped = wrapped
        self._keys: dict[int, Any] = {}

    def select(
        self, candidates: Sequence[Candidate], target: int, now: float
    ) -> Iterable[Candidate]:
        key = self.wrapped.sort_key
        keys = self._keys = {id(c): key(c) for c in candidates}

        def known(candidate: Candidate) -> Any:
            return keys[id(candidate)]

        if target > 0 and target * 8 < len(candidates):
            # Every candidate holds at least one connection: `target` of them always suffice.
            return heapq.nsmallest(target, candidates, key=known)
        return sorted(candidates, key=known)

    def reason(self, candidate: Candidate) -> Any:
        return self._keys.get(id(candidate))

    def __repr__(self) -> str:
        return f"SortKeyPolicy({self.wrapped!r})"


def as_policy(policy: object) -> TrimPolicy:
    """The policy as a `TrimPolicy`: itself, or a v0.1 `sort_key` policy adapted.

    Raises TypeError naming `policy` if it is neither (`_config.check_policy`).
    """
    check_policy(policy)
    if callable(getattr(policy, "select", None)):
        return policy  # type: ignore[return-value]
    return SortKeyPolicy(policy)  # type: ignore[arg-type]


def reason_of(policy: TrimPolicy) -> Any:
    """The policy's optional `reason(candidate)` (a victim's `Victim.reason`), or None."""
    reason = getattr(policy, "reason", None)
    return reason if callable(reason) else None


def _value_reaching(candidates: Sequence[Candidate], target: int) -> int:
    """The lowest value such that the candidates valued at most it hold `target` closable
    connections (or the highest value, if all of them together hold fewer)."""
    conns_at: dict[int, int] = {}
    for c in candidates:
        value = c.value
        conns_at[value] = conns_at.get(value, 0) + c.open_conns
    covered = 0
    value = 0
    for value in sorted(conns_at):
        covered += conns_at[value]
        if covered >= target:
            break
    return value
