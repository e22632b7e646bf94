"""The bounded memory of ended connections: the newest `limit` are always remembered."""

from __future__ import annotations

import random

import pytest

from asyncconnmgr._manager import _Remembered
from asyncconnmgr.testing import FakeConn


@pytest.mark.parametrize("limit", [1, 3, 5, 16])
def test_the_newest_are_remembered_and_the_size_is_bounded(limit: int) -> None:
    rng = random.Random(limit)
    remembered = _Remembered(limit)
    conns = [FakeConn(i) for i in range(40)]
    history: list[FakeConn] = []
    discarded: set[FakeConn] = set()
    for step in range(3_000):
        batch = [
            conn
            for conn in rng.sample(conns, rng.randint(0, 2 * limit + 3))
            if conn not in remembered and conn not in discarded
        ]
        if rng.random() < 0.3:
            for conn in batch:
                remembered.add(conn)
        else:  # the way `_drain` adds: inline, then one `track` for the batch
            for conn in batch:
                remembered.items[conn] = None
            remembered.track(batch)
        history += batch
        newest = [conn for conn in history[-limit:] if conn not in discarded]
        assert all(conn in remembered for conn in newest), step
        assert len(remembered) <= limit, step
        if newest and rng.random() < 0.1:
            conn = rng.choice(newest)
            assert remembered.discard(conn)
            assert not remembered.discard(conn)
            discarded.add(conn)
