"""The default clock: anyio's, so it follows the running event loop (asyncio or trio)."""

from __future__ import annotations

import anyio

__all__ = ["AnyioClock"]


class AnyioClock:
    """Reads and sleeps on the running event loop's clock.

    Like the event loop's own clock, it can only be read inside a running loop: a manager
    using it must be tagged and notified from async code (or given another `Clock`).
    """

    __slots__ = ()

    def now(self) -> float:
        try:
            return anyio.current_time()
        except Exception as exc:  # sniffio.AsyncLibraryNotFoundError or RuntimeError
            raise RuntimeError(
                "AnyioClock.now() needs a running event loop (asyncio or trio); "
                "call the manager from async code or inject a Clock"
            ) from exc

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)

    def __repr__(self) -> str:
        return "AnyioClock()"
