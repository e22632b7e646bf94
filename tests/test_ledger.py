"""The ledger: its memories of ended connections, and its rules under hostile sequences."""

from __future__ import annotations

import gc
import random
import weakref

import pytest

from asyncconnmgr._ledger import ConnMemory
from asyncconnmgr.testing import FakeConn


class SlottedConn:
    """A connection class whose instances cannot be weakly referenced."""

    __slots__ = ("remote_peer",)

    def __init__(self, peer: object) -> None:
        self.remote_peer = peer


@pytest.mark.parametrize("limit", [1, 3, 5, 16])
@pytest.mark.parametrize("weak", [True, False], ids=["weakref", "strong"])
def test_the_newest_are_remembered_and_the_size_is_bounded(limit: int, weak: bool) -> None:
    rng = random.Random(limit)
    memory = ConnMemory(limit)
    conns: list[object] = [FakeConn(i) if weak else SlottedConn(i) for i in range(40)]
    history: list[object] = []
    discarded: set[int] = set()
    for step in range(3_000):
        batch = [
            conn
            for conn in rng.sample(conns, rng.randint(0, 2 * limit + 3))
            if conn not in memory and id(conn) not in discarded
        ]
        if rng.random() < 0.3:
            for conn in batch:
                memory.add(conn)  # type: ignore[arg-type]
        else:
            memory.add_many(batch)  # type: ignore[arg-type]
        history += batch
        newest = [conn for conn in history[-limit:] if id(conn) not in discarded]
        assert all(conn in memory for conn in newest), step
        assert len(memory) <= limit, step
        if newest and rng.random() < 0.1:
            conn = rng.choice(newest)
            assert memory.discard(conn)  # type: ignore[arg-type]
            assert not memory.discard(conn)  # type: ignore[arg-type]
            discarded.add(id(conn))


def test_a_memory_keeps_no_connection_alive() -> None:
    memory = ConnMemory(100)
    conns = [FakeConn(i) for i in range(50)]
    refs = [weakref.ref(conn) for conn in conns]
    memory.add_many(conns)
    assert all(conn in memory for conn in conns)
    del conns
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert len(memory) == 0
    assert memory.alive() == []


def test_a_reused_id_is_not_mistaken_for_the_dead_connection() -> None:
    memory = ConnMemory(100)
    for round_ in range(200):  # CPython reuses the memory (and so the id) of freed objects
        conn = FakeConn(round_)
        memory.add(conn)
        del conn
        fresh = FakeConn("new")
        assert fresh not in memory
