"""Frozen value objects the manager hands out: snapshots, never live views."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from types import MappingProxyType

import attrs

from .abc import Conn, Direction, PeerId

__all__ = [
    "LOOPS",
    "OUTCOMES",
    "TRIGGERS",
    "CandidateConn",
    "ManagerInfo",
    "PeerStatus",
    "TagInfo",
    "TrimResult",
    "Victim",
]

#: What became of one connection a trim chose, from best to worst: closed; failed (`close()`
#: raised; it stays open and counted); timed_out (still running after `close_timeout` and the
#: connection has no `abort()`; it stays open and counted); aborted (timed out, then dropped
#: by its `abort()`; it left the counts); spared (protected after the plan, before its close
#: started); not_started (the deadline passed or every caller left first).
OUTCOMES: tuple[str, ...] = ("closed", "failed", "timed_out", "aborted", "spared", "not_started")
#: What started a trim: a call to `trim_open_conns()`; the background trimmer (high water
#: exceeded, one silence period after the last trim); the count crossing the ceiling of the
#: bounded count (at once); or `preview_trim()`, which closes nothing.
TRIGGERS: tuple[str, ...] = ("explicit", "background", "ceiling", "preview")

#: The manager's background loops, as named in `ManagerInfo.loop_failures`.
LOOPS: tuple[str, ...] = ("consumer", "trimmer", "decayer", "reaper")

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
class CandidateConn:
    """One connection of a trim candidate, as read when the trim chose its victims.

    `conn` is the connection itself, `direction` its direction as read at `connected`,
    `streams` its stream count (0 if it could not be read), `remote_addr` its address (None
    if unknown), `opened` when it was reported open (on the manager's clock).
    """

    conn: Conn
    direction: Direction
    streams: int
    remote_addr: str | None
    opened: float


@attrs.frozen(slots=True)
class Victim:
    """A peer a trim chose to close.

    `value` and `conns` are its value and the number of its connections the trim set out to
    close; `outcome` is the worst of what became of them (see `OUTCOMES`: a peer whose
    connections all closed says "closed"); `reason` is what the policy ordered it by (the
    default policy's key), or None.
    """

    peer: PeerId
    value: int
    conns: int
    outcome: str = "closed"
    reason: object = None


#: The slots of `Victim`, in `closed_victims`' column order.
_VICTIM_SETTERS = tuple(
    Victim.__dict__[name].__set__ for name in ("peer", "value", "conns", "outcome", "reason")
)


def closed_victims(
    peers: Sequence[PeerId],
    values: Iterable[int],
    sizes: Iterable[int],
    reasons: Iterable[object],
) -> tuple[Victim, ...]:
    """`Victim(peer, value, size, "closed", reason)` for each peer, made a column at a time
    in C: a trim at 100,000 connections has some 18,000 victims, and the generated
    `__init__` costs twice as much per victim. Equal to what the constructor makes, because
    `Victim` has no default factory, validator or converter for it to run (a test checks)."""
    victims = list(map(object.__new__, repeat(Victim, len(peers))))
    columns = (peers, values, sizes, repeat("closed"), reasons)
    for setter, column in zip(_VICTIM_SETTERS, columns, strict=True):
        deque(map(setter, victims, column), maxlen=0)
    return tuple(victims)


@attrs.frozen(slots=True)
class TrimResult:
    """What one trim did.

    `closed` and `failed` count connections; a failed close (it raised or timed out) leaves
    the connection open and counted, so a later trim may try again. `cut_short` is true when
    the deadline passed or the caller was cancelled before every chosen close had started;
    the connections whose close never started are left open and counted. `target` is how
    many connections the trim set out to close. `trigger` says what started it (see
    `TRIGGERS`); `outcomes` counts the chosen connections by outcome (see `OUTCOMES`).
    `victims` are the peers it chose, in closing order; `started_at` and `finished_at` are
    times on the manager's clock (None in the empty result of a manager whose trimming is
    disabled, and of a `NullConnManager`);
    `temporary_removed` counts the stale temporary entries the trim reaped as it started.
    An aborted connection counts in `closed` (it left the counts), a timed-out one in
    `failed`.
    """

    closed: int = 0
    failed: int = 0
    cut_short: bool = False
    target: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    victims: tuple[Victim, ...] = ()
    temporary_removed: int = 0
    trigger: str = "explicit"
    outcomes: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_counts)

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish on the manager's clock, or None if unknown."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@attrs.frozen(slots=True)
class PeerStatus:
    """Why a peer would or would not be closed now (`ConnManager.explain`).

    `state` is one of "unknown" (no entry), "temporary" (tagged, never connected; reaped at
    `until`), "protected" (by `protected_by`), "closing" (every connection is being closed),
    "in_grace" (until `until`), or "candidate". For a candidate, `rank` is its place in the
    closing order (0 closes first) among `candidates`, and `would_close` says whether a trim
    now would close it. A peer in grace beyond the bounded count's budget is a candidate.
    """

    peer: PeerId
    state: str
    value: int = 0
    conns: int = 0
    streams: int = 0
    outbound: int = 0
    protected_by: tuple[str, ...] = ()
    until: float | None = None
    rank: int | None = None
    candidates: int = 0
    would_close: bool = False


@attrs.frozen(slots=True)
class ManagerInfo:
    """The configuration and live counters of a manager, at one moment.

    `conn_count` counts open connections that are not being closed; `closing_count` those a
    trim is closing; `peer_count` peers with at least one open connection, including peers
    whose connections are all being closed (they leave when their last close completes).
    `last_trim` is the time (on the manager's clock) the most recent trim started.
    `loop_failures` counts unexpected exceptions per background loop (each one was logged and
    the loop restarted). `conns_by_direction` and `closing_by_direction` split `conn_count`
    and `closing_count` by "inbound", "outbound" and "unknown"; `trims_by_trigger` counts
    trims by `TrimResult.trigger`, `pruned_by_outcome` the connections trims chose by outcome,
    and `pruned_peers` the victims whose connections all closed. `stream_read_failures`
    counts connections whose `num_streams` could not be read (each logged once). `ceiling` and
    `grace_budget` are the bounded count's settings (None when it is off).

    The other counters: `temporary_count` (entries of tagged peers that never connected),
    `protected_count` (peers with at least one protection, connected or not),
    `queued_notifications` (reported, not yet applied), `trims` (every trim that started,
    `preview_trim()` excluded), `closed_conns` (connections trims closed or aborted),
    `close_failures` (closes that failed or timed out), `ignored_notifications`,
    `decay_failures` (decay functions that raised). `running` is true inside `async with`
    until `aclose()` begins; `closed` once it has finished.
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
    conns_by_direction: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_counts)
    closing_by_direction: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_counts)
    trims_by_trigger: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_counts)
    pruned_by_outcome: Mapping[str, int] = attrs.field(default=_EMPTY, converter=_frozen_counts)
    pruned_peers: int = 0
    stream_read_failures: int = 0
    ceiling: int | None = None
    grace_budget: int | None = None
