"""NullConnManager: the same surface as ConnManager, doing nothing."""

from __future__ import annotations

from collections.abc import Callable

import anyio.lowlevel

from ._models import ManagerInfo, TagInfo, TrimResult
from .abc import Conn, Notifiee, PeerId

__all__ = ["NullConnManager"]


class _NullNotifiee:
    __slots__ = ()

    def connected(self, conn: Conn) -> None:
        pass

    def disconnected(self, conn: Conn) -> None:
        pass


class NullConnManager:
    """A connection manager that manages nothing: for hosts that want no trimming.

    Every call is a no-op; `get_tag_info` returns an empty `TagInfo`; the coroutines are
    still checkpoints, like ConnManager's.
    """

    __slots__ = ()

    async def __aenter__(self) -> NullConnManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def tag_peer(self, peer: PeerId, tag: str, value: int) -> None:
        pass

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        pass

    def upsert_tag(self, peer: PeerId, tag: str, fn: Callable[[int], int]) -> None:
        pass

    def get_tag_info(self, peer: PeerId) -> TagInfo:
        return TagInfo(first_seen=0.0, value=0)

    def protect(self, peer: PeerId, tag: str) -> None:
        pass

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        return False

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        return False

    def check_limit(self, limit: int) -> None:
        pass

    def get_info(self) -> ManagerInfo:
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
        return _NullNotifiee()

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def trim_open_conns(self, *, deadline: float | None = None) -> TrimResult:
        await anyio.lowlevel.checkpoint()
        return TrimResult()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
