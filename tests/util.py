"""Small helpers shared by the manager's tests."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import anyio

from asyncconnmgr import ConnManager, Direction
from asyncconnmgr.testing import FakeConn, settle


def open_conns(
    manager: ConnManager,
    peers: Iterable[Hashable],
    *,
    direction: Direction = Direction.INBOUND,
    streams: int = 0,
) -> list[FakeConn]:
    """Opens one FakeConn per peer and reports it; closing one reports `disconnected`."""
    notifiee = manager.notifee()
    conns = [
        FakeConn(peer, direction=direction, num_streams=streams, notifiee=notifiee)
        for peer in peers
    ]
    for conn in conns:
        notifiee.connected(conn)
    return conns


def task_ids() -> set[int]:
    """The ids of the tasks running now (to check that none is left behind)."""
    return {task.id for task in anyio.get_running_tasks()}


async def applied(manager: ConnManager) -> None:
    """Lets the manager apply every notification and run its tasks until they all wait."""
    await manager.flush()
    await settle()


class Gate:
    """A close hook that blocks until opened, counting how many closes run at once."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.running = 0
        self.peak = 0
        self.entered = 0

    async def __call__(self, conn: FakeConn) -> None:
        self.entered += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.event.wait()
        finally:
            self.running -= 1

    def open(self) -> None:
        self.event.set()
