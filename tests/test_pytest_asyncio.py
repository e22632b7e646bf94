"""The manager driven from pytest-asyncio, the harness many asyncio hosts use.

The rest of the suite runs through anyio's plugin; this module proves the plain
`@pytest.mark.asyncio` path works too (no anyio fixtures involved).
"""

from __future__ import annotations

import asyncio

import pytest

from asyncconnmgr import ConnManager, ManagerClosedError
from asyncconnmgr.testing import FakeClock, settle

from .util import applied, open_conns


@pytest.mark.asyncio
async def test_background_trim_under_pytest_asyncio() -> None:
    clock = FakeClock()
    async with ConnManager(
        bounded_count=False,
        low_water=3,
        high_water=5,
        grace_period=1,
        silence_period=1,
        clock=clock,
    ) as cm:
        conns = open_conns(cm, [f"p{i}" for i in range(8)])
        cm.protect("p0", "relay")
        cm.tag_peer("p1", "dht", 10)
        await applied(cm)
        assert cm.get_info().conn_count == 8  # everyone is in grace
        clock.advance(1)
        await applied(cm)
        # Low water counts eligible connections: the protected peer comes on top.
        assert cm.get_info().conn_count == 4
        assert not conns[0].closed
        assert not conns[1].closed
        assert sum(conn.closed for conn in conns) == 4


@pytest.mark.asyncio
async def test_trim_with_a_deadline_inside_asyncio_wait_for() -> None:
    clock = FakeClock()
    async with ConnManager(low_water=0, high_water=10, grace_period=0, clock=clock) as cm:
        open_conns(cm, ["a", "b"])
        await cm.flush()
        result = await asyncio.wait_for(cm.trim_open_conns(deadline=clock.now() + 1), 5)
        assert (result.closed, result.cut_short) == (2, False)


@pytest.mark.asyncio
async def test_aclose_is_idempotent_under_asyncio_gather() -> None:
    cm = ConnManager(clock=FakeClock())
    async with cm:
        open_conns(cm, ["a"])
        await asyncio.gather(cm.aclose(), cm.aclose(), cm.aclose())
        assert cm.get_info().conn_count == 1
    with pytest.raises(ManagerClosedError):
        await cm.trim_open_conns()
    await settle()
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()
