"""Frozen value objects the manager hands out: snapshots, never live views."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

from .abc import Conn, PeerId

__all__ = ["ManagerInfo", "TagInfo", "TrimResult", "Victim"]

_EMPTY: Mapping[str, int] = MappingProxyType({})


def _frozen_counts(value: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(value))


def _frozen_conns(value: Mapping[Conn, float]) -> Mapping[Conn, float]:
    return MappingProxyType(dict(value))


@attrs.frozen(slots=True)
class TagInfo:
    """A snapshot of what the manager knows about one peer.

    `tags` holds plain tags and decaying tags (under the decaying tag's name); `value` is
    their sum. `conns` maps each open connection to the time it was reported open.
    `temporary` is true for an entry created by tagging a peer that has no connection yet.
    """

    first_seen: float
    value: int
    tags: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_counts)
    conns: Mapping[Conn, float] = attrs.field(
        factory=lambda: MappingProxyType({}), converter=_frozen_conns
    )
    temporary: bool = False


@attrs.frozen(slots=True)
class Victim:
    """A peer a trim chose to close, and why: its value and connection count at the time."""

    peer: PeerId
    value: int
    conns: int


@attrs.frozen(slots=True)
class TrimResult:
    """What one trim did.

    `closed` and `failed` count connections; a failed close (it raised or timed out) leaves
    the connection open and counted, so a later trim may try again. `cut_short` is true when
    the deadline passed or the caller was cancelled before every chosen close had started;
    the connections whose close never started are left open and counted. `target` is how
    many connections the trim set out to close.
    """

    closed: int = 0
    failed: int = 0
    cut_short: bool = False
    target: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    victims: tuple[Victim, ...] = ()
    temporary_removed: int = 0


@attrs.frozen(slots=True)
class ManagerInfo:
    """The configuration and live counters of a manager, at one moment.

    `conn_count` counts open connections that are not being closed; `closing_count` those a
    trim is closing; `peer_count` peers with at least one open connection, including peers
    whose connections are all being closed (they leave when their last close completes).
    `last_trim` is the time (on the manager's clock) the most recent trim started.
    `loop_failures` counts unexpected exceptions per background loop (each one was logged and
    the loop restarted).
    """

    low_water: int
    high_water: int
    grace_period: float
    silence_period: float
    last_trim: float | None
    conn_count: int
    peer_count: int
    closing_count: int = 0
    temporary_count: int = 0
    protected_count: int = 0
    queued_notifications: int = 0
    trims: int = 0
    closed_conns: int = 0
    close_failures: int = 0
    ignored_notifications: int = 0
    decay_failures: int = 0
    loop_failures: Mapping[str, int] = attrs.field(
        factory=lambda: MappingProxyType({}), converter=_frozen_counts
    )
    running: bool = False
    closed: bool = False
