"""The ledger: its memories of ended connections, and its rules under hostile sequences."""

from __future__ import annotations

import gc
import random
import tracemalloc
import weakref
from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from asyncconnmgr import Direction
from asyncconnmgr._ledger import ConnMemory, Ledger
from asyncconnmgr._table import PeerTable
from asyncconnmgr.abc import Conn
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


def test_a_connection_that_dies_costs_the_memory_nothing_more() -> None:
    # What a memory holds follows the remembered connections still alive. Before, a dead
    # one stayed in the memory's index until its ring slot came round again, and how many
    # such entries there were depended on how often CPython had reused an address: the same
    # churn could leave a few or thousands of them, hundreds of KiB that came and went.
    size = 4_096
    memory = ConnMemory(size)

    def batch_alive_at_once() -> None:  # distinct addresses, all dead once it returns
        memory.add_many([FakeConn(i) for i in range(size)])

    gc.collect()
    tracemalloc.start()  # before anything is made: the frees of what it sees are counted
    try:
        batch_alive_at_once()  # brings every structure to its working size
        for i in range(size):  # one at a time, each dead before the next: an address reused
            memory.add(FakeConn(i))
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        batch_alive_at_once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(memory) == 0
    assert grown < size * 4, f"{grown} bytes kept for {size} dead connections"


# --- the ledger's rules, under late, duplicate and out-of-order events ----------------------


class LedgerMachine(RuleBasedStateMachine):
    """Drives a `Ledger` with random notifications and close outcomes against a model.

    The host's notifications queue up and are applied in batches, as the manager does; a
    trim marks open connections closing and reports each close as completed or not done, in
    between batches. The model states the rules:

    - `connected` adds a connection, unless it is already open (a duplicate) or it ended
      (a `disconnected` came first, or a trim closed it): then it is ignored and counted;
    - `disconnected` removes an open connection (closing or not) and remembers that it ended;
      for a connection a trim closed it is the expected confirmation, once: not counted; for
      anything else it is ignored, counted, and remembered as ended;
    - a completed close removes the connection; a close not done puts it back in the counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.table = PeerTable(grace_period=0.0)
        self.ledger = Ledger(self.table)
        self.queue: deque[tuple[bool, Conn]] = deque()
        self.pending: list[tuple[bool, FakeConn]] = []
        self.conns: list[FakeConn] = []  # every connection ever made, kept alive
        # The model.
        self.open: set[FakeConn] = set()
        self.closing: set[FakeConn] = set()
        self.ended: set[FakeConn] = set()
        self.unconfirmed: set[FakeConn] = set()
        self.ignored = 0
        self.now = 0.0

    def _notify(self, connected: bool, conn: FakeConn) -> None:
        self.queue.append((connected, conn))
        self.pending.append((connected, conn))

    @rule(peer=st.integers(0, 5), direction=st.sampled_from(list(Direction)))
    def connect_new(self, peer: int, direction: Direction) -> None:
        conn = FakeConn(peer, direction=direction)
        self.conns.append(conn)
        self._notify(True, conn)

    @rule(peer=st.integers(0, 5))
    def disconnected_before_connected(self, peer: int) -> None:
        """The host reports the end of a connection before its start (out of order)."""
        conn = FakeConn(peer)
        self.conns.append(conn)
        self._notify(False, conn)
        self._notify(True, conn)

    @precondition(lambda self: bool(self.conns))
    @rule(data=st.data(), connected=st.booleans())
    def notify_again(self, data: st.DataObject, connected: bool) -> None:
        """A late, duplicate or out-of-order notification for a connection already seen."""
        conn = data.draw(st.sampled_from(self.conns))
        self._notify(connected, conn)

    @rule()
    def apply(self) -> None:
        self.now += 1.0
        self.ledger.apply(self.queue, self.now)
        assert not self.queue
        for connected, conn in self.pending:
            if connected:
                if conn in self.ended or conn in self.open:
                    self.ignored += 1
                else:
                    self.open.add(conn)
            elif conn in self.open:
                self.open.discard(conn)
                self.closing.discard(conn)
                self.ended.add(conn)
            elif conn in self.unconfirmed:
                self.unconfirmed.discard(conn)
            else:
                self.ignored += 1
                self.ended.add(conn)
        self.pending.clear()

    @precondition(lambda self: bool(self.open - self.closing))
    @rule(data=st.data())
    def trim_marks(self, data: st.DataObject) -> None:
        candidates = sorted(self.open - self.closing, key=self.conns.index)
        chosen = data.draw(st.lists(st.sampled_from(candidates), min_size=1, unique=True))
        assert self.table.mark_closing(chosen) == chosen
        self.closing.update(chosen)

    @precondition(lambda self: bool(self.closing))
    @rule(data=st.data(), completed=st.booleans())
    def close_outcome(self, data: st.DataObject, completed: bool) -> None:
        conn = data.draw(st.sampled_from(sorted(self.closing, key=self.conns.index)))
        self.closing.discard(conn)
        if completed:
            assert self.ledger.close_completed(conn) is not None
            self.open.discard(conn)
            self.ended.add(conn)
            self.unconfirmed.add(conn)
        else:
            self.ledger.close_not_done(conn)

    @precondition(lambda self: bool(self.conns))
    @rule(data=st.data())
    def outcome_of_a_close_the_host_already_reported(self, data: st.DataObject) -> None:
        """A close completing after the host's `disconnected` removed the connection."""
        conn = data.draw(st.sampled_from(self.conns))
        if conn in self.open:
            return
        assert self.ledger.close_completed(conn) is None
        self.ledger.close_not_done(conn)

    @invariant()
    def agrees_with_the_model(self) -> None:
        self.ledger._check_invariants()
        assert self.table.conn_count == len(self.open) - len(self.closing)
        assert self.table.closing_count == len(self.closing)
        for conn in self.conns:
            assert (self.table.entry_of(conn) is not None) == (conn in self.open)
        assert self.ledger.ignored == self.ignored
        peers = {conn.remote_peer for conn in self.open}
        assert self.table.peer_count == len(peers)


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_ledger_rules = LedgerMachine.TestCase
