"""The sans-IO PeerTable and victim selection, driven directly against a simple model."""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from asyncconnmgr import DefaultPolicy, Direction
from asyncconnmgr._table import PeerTable
from asyncconnmgr.testing import FakeConn

PEERS = st.sampled_from([f"p{i}" for i in range(8)])
TAGS = st.sampled_from(["a", "b", "c"])
GRACE = 2.0


@dataclass
class ModelPeer:
    seq: int
    first_seen: float
    temp: bool
    conns: set[FakeConn] = field(default_factory=set)
    tags: dict[str, int] = field(default_factory=dict)


class TableMachine(RuleBasedStateMachine):
    """Every operation on the table, checked against dicts and sets after each step."""

    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.table = PeerTable(GRACE)
        self.now = 0.0
        self.seq = 0
        self.peers: dict[str, ModelPeer] = {}
        self.protected: dict[str, set[str]] = {}
        self.closing: dict[FakeConn, None] = {}  # ordered, so draws are repeatable

    def clock(self) -> float:
        return self.now

    def _new_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- operations ---------------------------------------------------------------------

    def _open(self, peer: str, outbound: bool, streams: int) -> FakeConn:
        direction = Direction.OUTBOUND if outbound else Direction.INBOUND
        conn = FakeConn(peer, direction=direction, num_streams=streams)
        assert self.table.add_conn(conn, self.now) is not None
        model = self.peers.get(peer)
        if model is None:
            model = self.peers[peer] = ModelPeer(self._new_seq(), self.now, temp=False)
        elif model.temp:
            model.temp = False
            model.first_seen = self.now
        model.conns.add(conn)
        return conn

    @rule(
        target=conns,
        peer=PEERS,
        outbound=st.booleans(),
        streams=st.integers(min_value=0, max_value=3),
    )
    def connect(self, peer: str, outbound: bool, streams: int) -> FakeConn:
        return self._open(peer, outbound, streams)

    @rule(
        target=conns,
        batch=st.lists(
            st.tuples(PEERS, st.booleans(), st.integers(min_value=0, max_value=3)),
            min_size=2,
            max_size=8,
        ),
    )
    def connect_several(self, batch: list[tuple[str, bool, int]]) -> MultipleResults[FakeConn]:
        return multiple(*[self._open(*args) for args in batch])

    @rule(target=conns, peer=PEERS, count=st.integers(17, 24))
    def connect_many(self, peer: str, count: int) -> MultipleResults[FakeConn]:
        # Beyond 16 connections a peer keeps them in a dict: both layouts are exercised.
        return multiple(*[self._open(peer, i % 3 == 0, i % 2) for i in range(count)])

    @rule(conn=conns)
    def duplicate_connect(self, conn: FakeConn) -> None:
        # Connections leave the bundle when they disconnect, so this one is known.
        assert self.table.entry_of(conn) is not None
        assert self.table.add_conn(conn, self.now) is None

    @rule(conn=consumes(conns))
    def disconnect(self, conn: FakeConn) -> None:
        peer = str(conn.remote_peer)
        model = self.peers[peer]
        assert self.table.remove_conn(conn) is not None
        assert self.table.remove_conn(conn) is None  # a second disconnected changes nothing
        model.conns.discard(conn)
        self.closing.pop(conn, None)
        if not model.conns:
            del self.peers[peer]

    @rule(peer=PEERS, tag=TAGS, value=st.integers(-50, 50))
    def tag(self, peer: str, tag: str, value: int) -> None:
        self.table.tag_peer(peer, tag, value, self.clock)
        self._model_entry(peer).tags[tag] = value

    @rule(peer=PEERS, tag=TAGS)
    def untag(self, peer: str, tag: str) -> None:
        self.table.untag_peer(peer, tag)
        if peer in self.peers:
            self.peers[peer].tags.pop(tag, None)

    @rule(peer=PEERS, tag=TAGS, delta=st.integers(-5, 5))
    def upsert(self, peer: str, tag: str, delta: int) -> None:
        self.table.upsert_tag(peer, tag, lambda v: v + delta, self.clock)
        model = self._model_entry(peer)
        model.tags[tag] = model.tags.get(tag, 0) + delta

    def _model_entry(self, peer: str) -> ModelPeer:
        model = self.peers.get(peer)
        if model is None:
            model = self.peers[peer] = ModelPeer(self._new_seq(), self.now, temp=True)
        return model

    @rule(peer=PEERS, tag=st.sampled_from(["x", "y"]))
    def protect(self, peer: str, tag: str) -> None:
        self.table.protect(peer, tag)
        self.protected.setdefault(peer, set()).add(tag)

    @rule(peer=PEERS, tag=st.sampled_from(["x", "y"]))
    def unprotect(self, peer: str, tag: str) -> None:
        tags = self.protected.get(peer, set())
        tags.discard(tag)
        if not tags:
            self.protected.pop(peer, None)
        assert self.table.unprotect(peer, tag) is bool(tags)

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def reap(self) -> None:
        stale = [p for p, m in self.peers.items() if m.temp and m.first_seen + GRACE <= self.now]
        assert self.table.reap_temporary(self.now) == len(stale)
        for peer in stale:
            del self.peers[peer]

    @rule(low_water=st.integers(0, 6), mark=st.booleans())
    def plan(self, low_water: int, mark: bool) -> None:
        found = self.table.candidates(self.now)
        target = found.count - low_water
        ordered = DefaultPolicy().select(found.eligible, target, self.now)
        plan = self.table.choose(ordered, target)  # type: ignore[arg-type]
        candidates = []
        eligible = 0
        for peer, model in self.peers.items():
            if model.temp or peer in self.protected or model.first_seen > self.now - GRACE:
                continue
            open_conns = [c for c in model.conns if c not in self.closing]
            if open_conns:
                candidates.append((peer, model, open_conns))
                eligible += len(open_conns)
        assert found.count == found.eligible_count == eligible
        assert found.in_grace == []
        target = max(eligible - low_water, 0)

        def key(item: tuple[str, ModelPeer, list[FakeConn]]) -> tuple[object, ...]:
            _, model, _ = item
            streams = sum(c.num_streams for c in model.conns)
            value = sum(model.tags.values())
            outbound = any(c.direction is Direction.OUTBOUND for c in model.conns)
            return (value, streams > 0, outbound, streams, -model.first_seen, -model.seq)

        expected: list[str] = []
        expected_conns: list[FakeConn] = []
        covered = 0
        for peer, _, open_conns in sorted(candidates, key=key):
            if covered >= target:
                break
            expected.append(peer)
            expected_conns += open_conns
            covered += len(open_conns)
        event(f"victims={min(len(expected), 4)} of {min(len(candidates), 4)} candidates")
        assert [entry.peer for entry in plan.entries] == expected
        assert set(plan.conns) == set(expected_conns)
        assert sum(plan.sizes) == len(plan.conns)
        if mark:
            assert set(self.table.mark_closing(expected_conns)) == set(expected_conns)
            assert self.table.mark_closing(expected_conns) == []  # never picked twice
            self.closing.update(dict.fromkeys(expected_conns))

    @precondition(lambda self: bool(self.closing))
    @rule(data=st.data())
    def unmark(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(list(self.closing)))
        assert self.table.unmark_closing(conn)
        del self.closing[conn]

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        self.table._check_invariants()
        real = {p: m for p, m in self.peers.items() if not m.temp}
        total = sum(len(m.conns) for m in real.values())
        assert self.table.conn_count == total - len(self.closing)
        assert self.table.closing_count == len(self.closing)
        assert self.table.peer_count == len(real)
        by_direction = self.table.conns_by_direction()
        outbound = sum(
            1
            for m in real.values()
            for c in m.conns
            if c.direction is Direction.OUTBOUND and c not in self.closing
        )
        assert by_direction["outbound"] == outbound
        assert sum(by_direction.values()) == self.table.conn_count
        assert sum(self.table.closing_by_direction().values()) == len(self.closing)
        assert self.table.temporary_count == len(self.peers) - len(real)
        for peer, model in self.peers.items():
            info = self.table.tag_info(peer)
            assert info is not None
            assert dict(info.tags) == model.tags
            assert info.value == sum(model.tags.values())
            assert set(info.conns) == model.conns
            assert info.temporary is model.temp
            assert info.first_seen == model.first_seen
        for peer in [f"p{i}" for i in range(8)]:
            assert self.table.is_protected(peer) is (peer in self.protected)
            if peer not in self.peers:
                assert self.table.tag_info(peer) is None


TableMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_table_against_model = TableMachine.TestCase
