"""The interfaces of asyncconnmgr, as `typing.Protocol` classes.

A connection is anything that has the attributes of `Conn`: the library never imports a
transport. Both `ConnManager` and `NullConnManager` satisfy the `ConnManager` protocol, so a
host can take either.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._models import ManagerInfo, TagInfo, TrimResult

__all__ = ["Clock", "Conn", "ConnManager", "Direction", "Notifiee", "PeerId"]

PeerId = Hashable
"""A peer identifier: any hashable value (py-libp2p's `ID`, a string, bytes...).

Do not mix types that compare equal but hash differently for the same peer (py-libp2p's
`ID` and its `str` form, for instance): they would be two peers here.
"""


class Direction(enum.Enum):
    """Which side opened a connection."""

    UNKNOWN = 0
    INBOUND = 1
    OUTBOUND = 2


@runtime_checkable
class Conn(Protocol):
    """A connection as the manager sees it.

    The connection object itself is the key under which the manager tracks it, by identity:
    two connections with the same address are still two connections. Implementations should
    keep the default identity `__eq__`/`__hash__`.
    """

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def direction(self) -> Direction: ...

    @property
    def num_streams(self) -> int:
        """The number of open streams, read when a trim chooses its victims."""
        ...

    @property
    def remote_addr(self) -> str | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Notifiee(Protocol):
    """What the host calls when connections open and close.

    Both calls are synchronous, never block and never raise: the event is queued and applied
    by the manager's consumer task (or by `flush()`).
    """

    def connected(self, conn: Conn) -> None: ...

    def disconnected(self, conn: Conn) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """The only source of time the manager uses.

    `now()` returns seconds on an arbitrary monotonic scale; `sleep_until(deadline)` waits
    until `now() >= deadline` and must be cancellable. Inject
    `asyncconnmgr.testing.FakeClock` in tests to drive time by hand.
    """

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


@runtime_checkable
class ConnManager(Protocol):
    """The connection-manager interface (libp2p's `ConnManager`), for hosts to depend on."""

    def tag_peer(self, peer: PeerId, tag: str, value: int) -> None: ...

    def untag_peer(self, peer: PeerId, tag: str) -> None: ...

    def upsert_tag(self, peer: PeerId, tag: str, fn: Callable[[int], int]) -> None: ...

    def get_tag_info(self, peer: PeerId) -> TagInfo | None: ...

    def protect(self, peer: PeerId, tag: str) -> None: ...

    def unprotect(self, peer: PeerId, tag: str) -> bool: ...

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool: ...

    def check_limit(self, limit: int) -> None: ...

    def get_info(self) -> ManagerInfo: ...

    def notifee(self) -> Notifiee: ...

    async def flush(self) -> None: ...

    async def trim_open_conns(self, *, deadline: float | None = None) -> TrimResult: ...

    async def aclose(self) -> None: ...
