"""NullConnManager: the same surface as ConnManager, doing nothing."""

from __future__ import annotations

from collections.abc import Callable

import anyio.lowlevel

from ._config import check_callable, check_seconds, check_tag
from ._decay import BumpFn, DecayFn
from ._models import ManagerInfo, TagInfo, TrimResult
from .abc import Conn, DecayingTag, Notifiee, PeerId

__all__ = ["NullConnManager"]


class _NullNotifiee:
    __slots__ = ()

    def connected(self, conn: Conn) -> None:
        pass

    def disconnected(self, conn: Conn) -> None:
        pass


class _NullDecayingTag:
    """What `NullConnManager.register_decaying_tag()` returns: an `abc.DecayingTag` whose
    `bump`, `remove` and `close` do nothing (and never raise)."""

    __slots__ = ("closed", "interval", "name")

    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval
        self.closed = False

    def bump(self, peer: PeerId, delta: int) -> None:
        """Does nothing: no value is kept."""

    def remove(self, peer: PeerId) -> None:
        """Does nothing: there is no value to drop."""

    def close(self) -> None:
        """Marks the handle closed; nothing else happens."""
        self.closed = True

    def __repr__(self) -> str:
        return f"<null DecayingTag {self.name!r}>"


class NullConnManager:
    """A connection manager that manages nothing: for hosts that want no trimming.

    It satisfies `asyncconnmgr.abc.ConnManager`, so code typed against the protocol takes it
    in place of a `ConnManager`. Every call is a no-op that accepts any argument (except
    `register_decaying_tag`, which checks its arguments as `ConnManager` does);
    `get_tag_info` returns an empty `TagInfo`; the coroutines are still checkpoints, like
    ConnManager's. It holds no state, so it may be entered any number of times, and used
    without being entered.
    """

    __slots__ = ()

    async def __aenter__(self) -> NullConnManager:
        """Returns the manager itself, after a checkpoint (where a cancellation may arrive,
        leaving nothing behind)."""
        await anyio.lowlevel.checkpoint()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Checkpoints (as `aclose()`); the body's exception, if any, propagates as itself."""
        await self.aclose()

    def tag_peer(self, peer: PeerId, tag: str, value: int) -> None:
        """Does nothing."""

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        """Does nothing."""

    def upsert_tag(self, peer: PeerId, tag: str, fn: Callable[[int], int]) -> None:
        """Does nothing: `fn` is never called."""

    def get_tag_info(self, peer: PeerId) -> TagInfo:
        """An empty `TagInfo` (value 0, no tags, no connections), whatever the peer."""
        return TagInfo(first_seen=0.0, value=0)

    def protect(self, peer: PeerId, tag: str) -> None:
        """Does nothing: no peer is ever closed here anyway."""

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Returns False (no protection is kept)."""
        return False

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        """Returns False (no protection is kept)."""
        return False

    def register_decaying_tag(
        self, name: str, interval: float, decay_fn: DecayFn, bump_fn: BumpFn
    ) -> DecayingTag:
        """A handle whose `bump`, `remove` and `close` do nothing.

        The arguments are checked as `ConnManager.register_decaying_tag` checks them, so code
        that works here works there: TypeError or ValueError naming `name` (a non-empty
        str), `interval` (a finite number of seconds > 0), `decay_fn` or `bump_fn`
        (callables). No name is remembered: registering one twice is not an error here.
        """
        check_tag("name", name)
        seconds = check_seconds("interval", interval, positive=True)
        check_callable("decay_fn", decay_fn)
        check_callable("bump_fn", bump_fn)
        return _NullDecayingTag(name, seconds)

    def check_limit(self, limit: int) -> None:
        """Does nothing: a manager that keeps no connection exceeds no limit."""

    def get_info(self) -> ManagerInfo:
        """A `ManagerInfo` with zero water marks and zero counts."""
        return ManagerInfo(
            low_water=0,
            high_water=0,
            grace_period=0.0,
            silence_period=0.0,
            last_trim=None,
            conn_count=0,
            peer_count=0,
        )

    def notifee(self) -> Notifiee:
        """A notifiee whose `connected` and `disconnected` do nothing."""
        return _NullNotifiee()

    async def flush(self) -> None:
        """A checkpoint; cancelling it leaves nothing behind."""
        await anyio.lowlevel.checkpoint()

    async def trim_open_conns(self, *, deadline: float | None = None) -> TrimResult:
        """An empty `TrimResult` after a checkpoint; cancelling it leaves nothing behind."""
        await anyio.lowlevel.checkpoint()
        return TrimResult()

    async def aclose(self) -> None:
        """A checkpoint; cancelling it leaves nothing behind."""
        await anyio.lowlevel.checkpoint()
