"""The interfaces of asyncconnmgr, as `typing.Protocol` classes.

A connection is anything that has the attributes of `Conn`: the library never imports a
transport. Both `asyncconnmgr.ConnManager` and `asyncconnmgr.NullConnManager` satisfy the
`ConnManager` protocol, entered with `async with` included, so a host typed against the
protocol takes either.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._decay import BumpFn, DecayFn
    from ._models import ManagerInfo, TagInfo, TrimResult

__all__ = ["Clock", "Conn", "ConnManager", "DecayingTag", "Direction", "Notifiee", "PeerId"]

PeerId = Hashable
"""A peer identifier: any hashable value except None (py-libp2p's `ID`, a string, bytes...).

Do not mix types that compare equal but hash differently for the same peer (py-libp2p's
`ID` and its `str` form, for instance): they would be two peers here.
"""


class Direction(enum.Enum):
    """Which side opened a connection.

    A connection whose `direction` is not a `Direction` counts as `UNKNOWN`.
    """

    UNKNOWN = 0
    """Neither side is known (or the host reported something that is not a `Direction`)."""
    INBOUND = 1
    """The remote peer dialled this host."""
    OUTBOUND = 2
    """This host dialled the remote peer."""


@runtime_checkable
class Conn(Protocol):
    """A connection as the manager sees it.

    The connection object itself is the key under which the manager tracks it, by identity:
    two connections with the same address are still two connections. Implementations should
    keep the default identity `__eq__`/`__hash__`; a class with `__slots__` should include
    `__weakref__`, so that the manager's memory of ended connections does not keep them
    alive.

    `remote_peer` and `direction` are read once, when `connected` is applied; every later
    step uses that snapshot.

    Optional: a synchronous `abort()`. It is looked up with `getattr` when a close is still
    running after `close_timeout`; if it is there and callable, the manager cancels the close,
    calls `abort()` once, and counts the connection as closed (outcome "aborted"). Without it
    (or if it raises), the connection stays open and counted (outcome "timed_out"). It is not
    a member of this protocol, so a class without it still satisfies `Conn`.
    """

    @property
    def remote_peer(self) -> PeerId:
        """The remote peer's id, as the rest of the host names it in `tag_peer` and the like."""
        ...

    @property
    def direction(self) -> Direction:
        """Which side dialled."""
        ...

    @property
    def num_streams(self) -> int:
        """The number of open streams, read once per trim when it chooses its victims.

        A value that raises, or is not a non-negative `int`, counts as 0 (idle); it is
        logged once per connection and counted in `ManagerInfo.stream_read_failures`.
        """
        ...

    @property
    def remote_addr(self) -> str | None:
        """The remote address, if known (policies may group peers by it)."""
        ...

    async def close(self) -> None:
        """Closes the connection; the host then reports `disconnected` (or not: the
        manager forgets a connection it closed itself).

        Called by a trim, shielded from the trim's cancellation and bounded by
        `close_timeout`. An `Exception` is a failed close (the connection stays open and
        counted). A plain function that returns a non-awaitable is a completed close.
        """
        ...


@runtime_checkable
class Notifiee(Protocol):
    """What the host calls when connections open and close.

    Both calls are synchronous, never block and never raise: the event is queued and applied
    by the manager's consumer task (or by `flush()`). A duplicate, late or unknown event is
    counted in `ManagerInfo.ignored_notifications` and otherwise ignored.
    """

    def connected(self, conn: Conn) -> None:
        """Reports `conn` open (any `Conn`)."""
        ...

    def disconnected(self, conn: Conn) -> None:
        """Reports `conn` closed (the same object that was reported open)."""
        ...


@runtime_checkable
class Clock(Protocol):
    """The only source of time the manager uses.

    Inject `asyncconnmgr.testing.FakeClock` in tests to drive time by hand.
    """

    def now(self) -> float:
        """Seconds on an arbitrary monotonic scale."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Returns once `now() >= deadline` (at once, after a checkpoint, if it already is).

        Must be cancellable; a cancelled sleep leaves nothing behind.
        """
        ...


@runtime_checkable
class DecayingTag(Protocol):
    """The handle `ConnManager.register_decaying_tag()` returns (go-libp2p's `DecayingTag`).

    `asyncconnmgr.DecayingTag` is the real one; `NullConnManager` returns a handle whose
    calls do nothing.
    """

    @property
    def name(self) -> str:
        """The name the tag was registered under; its values show under it in `TagInfo`."""
        ...

    @property
    def interval(self) -> float:
        """Seconds between two decay visits (never less than the manager's resolution)."""
        ...

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        ...

    def bump(self, peer: PeerId, delta: int) -> None:
        """Applies the tag's bump function to the peer's value and `delta`, at once.

        Raises `ManagerClosedError` once the tag is closed, TypeError for a bad `peer` or
        `delta`; an exception of the bump function reaches the caller, and nothing changes.
        """
        ...

    def remove(self, peer: PeerId) -> None:
        """Drops the peer's value under this tag (a peer with none is left alone).

        Raises `ManagerClosedError` once the tag is closed, TypeError for a bad `peer`.
        """
        ...

    def close(self) -> None:
        """Removes the tag's values from every peer and frees its name; idempotent."""
        ...


@runtime_checkable
class ConnManager(Protocol):
    """The connection-manager interface (libp2p's `ConnManager`), for hosts to depend on.

    Run one with `async with manager:`, which returns the manager; leaving the block closes
    it (as `aclose()` does). The methods are those of `asyncconnmgr.ConnManager`, whose
    docstrings say what each raises; a `NullConnManager` accepts every call and does nothing.
    """

    async def __aenter__(self) -> ConnManager:
        """Starts the manager's background work; returns the manager itself.

        A manager can be entered once. If entering is cancelled, nothing is left running.
        """
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Closes the manager (see `aclose`); the body's exception comes out as itself."""
        ...

    def tag_peer(self, peer: PeerId, tag: str, value: int) -> None:
        """Sets the peer's `tag` to `value` (not added to it)."""
        ...

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        """Removes the peer's `tag`; an unknown peer or tag is left alone."""
        ...

    def upsert_tag(self, peer: PeerId, tag: str, fn: Callable[[int], int]) -> None:
        """Sets the peer's `tag` to `fn(current value, or 0)`."""
        ...

    def get_tag_info(self, peer: PeerId) -> TagInfo | None:
        """A snapshot of what the manager knows of the peer, or None."""
        ...

    def protect(self, peer: PeerId, tag: str) -> None:
        """Protects the peer under `tag`: never trimmed while any protection remains."""
        ...

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Removes one protection; True if the peer is still protected by another."""
        ...

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        """Whether the peer is protected under `tag` (under any tag if None)."""
        ...

    def register_decaying_tag(
        self, name: str, interval: float, decay_fn: DecayFn, bump_fn: BumpFn
    ) -> DecayingTag:
        """Registers a tag whose values fade every `interval` seconds unless bumped."""
        ...

    def check_limit(self, limit: int) -> None:
        """Raises `LimitExceededError` if high water exceeds the host's `limit`."""
        ...

    def get_info(self) -> ManagerInfo:
        """A snapshot of the configuration and the live counters."""
        ...

    def notifee(self) -> Notifiee:
        """The object the host calls when connections open and close."""
        ...

    async def flush(self) -> None:
        """Returns once every notification queued before the call has been applied.

        A cancelled call may or may not have applied them; `asyncconnmgr.ConnManager`'s
        applies them before it first yields, so a cancelled call has applied them all the
        same. Raises nothing of its own.
        """
        ...

    async def trim_open_conns(self, *, deadline: float | None = None) -> TrimResult:
        """Closes the least valuable peers until low water, giving up starting closes after
        `deadline` (a time on the manager's clock, or None).

        Raises TypeError or ValueError naming `deadline` for a bad one. A cancelled call
        re-raises the cancellation and starts no close after it; the closes already started
        finish (each within the close timeout) and the connections never started stay open
        and counted. See `asyncconnmgr.ConnManager.trim_open_conns` for the real manager's
        errors and joined trims.
        """
        ...

    async def aclose(self) -> None:
        """Applies queued notifications, then stops all background work; idempotent.

        Raises nothing of its own. A cancelled call does not stop the shutdown: it completes
        anyway (see `asyncconnmgr.ConnManager.aclose`).
        """
        ...
