"""Choosing victims: which peers a trim closes first.

A policy is a pure function of one candidate's snapshot: `sort_key(candidate)` returns a key,
and the table closes candidates in increasing key order until the target is covered. Keys are
computed once per candidate, before sorting, so the order is total and deterministic even
though stream counts are live values (the reference sorts with comparators that re-read
shared state under locks while the sort runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .abc import Conn, PeerId

__all__ = ["Candidate", "DefaultPolicy", "TrimPolicy"]


class Candidate(Protocol):
    """The read-only view of a peer that a policy may use."""

    @property
    def peer(self) -> PeerId: ...

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
    def outbound(self) -> int:
        """How many of the peer's connections this host dialled."""
        ...

    @property
    def seq(self) -> int:
        """A number unique to the entry, increasing with creation: the final tie-breaker."""
        ...


class TrimPolicy(Protocol):
    def sort_key(self, candidate: Candidate) -> Any:
        """A key such that the candidate to close first has the smallest key."""
        ...


class DefaultPolicy:
    """Closes the least valuable peers first.

    Lowest first: value; idle peers (no open stream) before busy ones; peers that only
    dialled us before peers we dialled; fewer streams; the youngest (long-lived peers have
    proven themselves); and, for a total order, the most recently created entry.
    """

    __slots__ = ()

    def sort_key(self, candidate: Candidate) -> tuple[int, bool, bool, int, float, int]:
        streams = 0
        for conn in candidate.conns:
            streams += conn.num_streams
        return (
            candidate.value,
            streams > 0,
            candidate.outbound > 0,
            streams,
            -candidate.first_seen,
            -candidate.seq,
        )

    def __repr__(self) -> str:
        return "DefaultPolicy()"
