"""The end-to-end model test: a running ConnManager against a simple model of it.

Hypothesis generates a configuration and a sequence of operations, which drive a manager
through its public API on a FakeClock (asyncio and trio): connections opened and closed by
the host, duplicate and out-of-order notifications, tags, upserts (one raises, one calls back
into the manager), protections, decaying bumps (one raises), clock advances, explicit trims,
and closes that succeed, report their own `disconnected`, raise or hang. Background trims,
decay ticks and reaping happen on their own, as time passes.

The model is plain dicts. It is told what happens as it happens: the test's own operations,
and, through hooks that run synchronously inside the manager, every close (from the close
itself), every decay visit (from the decay function) and, with the recording policy, every
trim's choice (from the policy). At each hook it checks the manager's decision against the
model's state at that moment:

- a connection closed by a trim belonged to an eligible peer (not protected, out of grace,
  connected), was chosen in policy order (the shortest prefix covering the target), and was
  never closed successfully before;
- a decay function sees exactly the value the model holds.

After every operation, once everything has settled, it checks the whole state: counts
(`conn_count` is the connections opened minus those closed, however the notifications came),
every peer's tags, value, connections, grace start and protection, the counters of ignored
notifications, closes and failures, and the table's invariants. At the end it checks that the
trimmer brought the table down, then `aclose()`: nothing left running.

`HYPOTHESIS_PROFILE=nightly` runs many more examples than the default (CI) profile.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from asyncconnmgr import (
    Candidate,
    ConnManager,
    DecayingTag,
    DecayingValue,
    DefaultPolicy,
    Direction,
    ManagerClosedError,
    TrimResult,
    Victim,
)
from asyncconnmgr.testing import FakeClock, FakeConn, settle

from .util import Boom, task_ids

pytestmark = pytest.mark.anyio

# --- Hypothesis settings ----------------------------------------------------------------------

#: Examples per backend in CI; `HYPOTHESIS_PROFILE=nightly` runs the nightly profile's number.
CI_EXAMPLES = 250
NIGHTLY_EXAMPLES = 5000

try:
    settings.get_profile("nightly")
except InvalidArgument:  # not registered yet (by conftest.py or another module)
    settings.register_profile("nightly", max_examples=NIGHTLY_EXAMPLES, deadline=None)

_NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"

MODEL_SETTINGS = settings(
    max_examples=settings.get_profile("nightly").max_examples if _NIGHTLY else CI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- the world -------------------------------------------------------------------------------

PEERS = ("p0", "p1", "p2", "p3", "p4", "p5")
TAGS = ("t1", "t2")
PROTECTIONS = ("a", "b")
CLOSE_TIMEOUT = 3.0
DECAY_RESOLUTION = 1.0
#: A bump of this size makes the bump function raise.
POISON_DELTA = 6
#: A real-time guard only against a hang: nothing in the test waits on real time.
HANG_GUARD = 10.0

Behaviour = Literal["ok", "report", "raise_once", "raise_always", "hang_once", "report_raise"]
BEHAVIOURS: tuple[Behaviour, ...] = (
    "ok",  # close() succeeds; the host never reports it
    "report",  # close() reports `disconnected` itself, synchronously, and succeeds
    "raise_once",  # the first close() raises, later ones succeed
    "raise_always",  # every close() raises
    "hang_once",  # the first close() hangs past close_timeout, later ones succeed
    "report_raise",  # close() reports `disconnected`, then raises
)


@attrs.frozen
class Config:
    low: int
    high: int
    grace: float
    silence: float
    concurrency: int
    recording_policy: bool

    @property
    def trimming_disabled(self) -> bool:
        return self.high == 0


# --- operations --------------------------------------------------------------------------------


@attrs.frozen
class Connect:
    peer: str
    outbound: bool
    streams: int
    behaviour: Behaviour


@attrs.frozen
class ConnectMany:
    """A burst: several connections reported at once, before the manager runs."""

    conns: tuple[Connect, ...]


@attrs.frozen
class Disconnect:
    """The host reports `disconnected` for a connection, whatever its state."""

    index: int


@attrs.frozen
class Reconnect:
    """The host reports `connected` again: a duplicate, or late (after `disconnected`)."""

    index: int


@attrs.frozen
class DisconnectFirst:
    """A new connection whose `disconnected` overtakes its `connected`."""

    peer: str


@attrs.frozen
class SetStreams:
    index: int
    streams: int


@attrs.frozen
class Tag:
    peer: str
    tag: str
    value: int


@attrs.frozen
class Untag:
    peer: str
    tag: str


@attrs.frozen
class Upsert:
    peer: str
    tag: str
    delta: int
    mode: Literal["plain", "raise", "reenter"]


@attrs.frozen
class Protect:
    peer: str
    tag: str


@attrs.frozen
class Unprotect:
    peer: str
    tag: str


@attrs.frozen
class Bump:
    tag: Literal["dk", "dn"]
    peer: str
    delta: int


@attrs.frozen
class PoisonDecay:
    """Toggles whether the "dk" decay function raises for this peer."""

    peer: str


@attrs.frozen
class Advance:
    seconds: float


@attrs.frozen
class Trim:
    pass


Op = (
    Connect
    | ConnectMany
    | Disconnect
    | Reconnect
    | DisconnectFirst
    | SetStreams
    | Tag
    | Untag
    | Upsert
    | Protect
    | Unprotect
    | Bump
    | PoisonDecay
    | Advance
    | Trim
)

peers = st.sampled_from(PEERS)
indices = st.integers(0, 50)
connect_ops = st.builds(
    Connect,
    peer=peers,
    outbound=st.booleans(),
    streams=st.integers(0, 2),
    behaviour=st.sampled_from(BEHAVIOURS),
)
advances = st.builds(Advance, seconds=st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0, 11.0, 25.0]))
#: Each strategy with its weight (how many times it is repeated in the `one_of`).
WEIGHTED: list[tuple[int, st.SearchStrategy[Op]]] = [
    (5, connect_ops),
    (2, st.builds(ConnectMany, conns=st.lists(connect_ops, min_size=2, max_size=6).map(tuple))),
    (3, st.builds(Disconnect, index=indices)),
    (1, st.builds(Reconnect, index=indices)),
    (1, st.builds(DisconnectFirst, peer=peers)),
    (1, st.builds(SetStreams, index=indices, streams=st.integers(0, 3))),
    (3, st.builds(Tag, peer=peers, tag=st.sampled_from(TAGS), value=st.integers(-5, 10))),
    (1, st.builds(Untag, peer=peers, tag=st.sampled_from(TAGS))),
    (
        2,
        st.builds(
            Upsert,
            peer=peers,
            tag=st.sampled_from(TAGS),
            delta=st.integers(-3, 3),
            mode=st.sampled_from(["plain", "raise", "reenter"]),
        ),
    ),
    (1, st.builds(Protect, peer=peers, tag=st.sampled_from(PROTECTIONS))),
    (1, st.builds(Unprotect, peer=peers, tag=st.sampled_from(PROTECTIONS))),
    (
        2,
        st.builds(
            Bump,
            tag=st.sampled_from(["dk", "dn"]),
            peer=peers,
            delta=st.integers(0, POISON_DELTA),
        ),
    ),
    (1, st.builds(PoisonDecay, peer=peers)),
    (4, advances),
    (3, st.builds(Trim)),
]
OPS: st.SearchStrategy[Op] = st.one_of(
    [strategy for weight, strategy in WEIGHTED for _ in range(weight)]
)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    if draw(st.integers(0, 9)) == 0:
        low = high = 0  # trimming disabled
    else:
        low = draw(st.integers(0, 4))
        high = draw(st.integers(max(low, 1), low + 4))
    return Config(
        low=low,
        high=high,
        grace=draw(st.sampled_from([0.0, 2.0, 5.0, 20.0])),
        silence=draw(st.sampled_from([1.0, 5.0, 10.0])),
        concurrency=draw(st.sampled_from([1, 2, 8])),
        recording_policy=draw(st.booleans()),
    )


# --- the model -----------------------------------------------------------------------------------


@attrs.define(eq=False)
class ConnModel:
    fake: FakeConn
    peer: str
    behaviour: Behaviour
    attempts: int = 0
    in_table: bool = False  # the manager counts it open
    ended: bool = False  # the manager knows it is closed (a `connected` for it is stale)
    unconfirmed: bool = False  # closed by a trim, the host's `disconnected` not seen yet
    closed_ok: bool = False  # a close() of it succeeded


@attrs.define(eq=False)
class PeerModel:
    seq: int
    first_seen: float
    temp: bool
    tags: dict[str, int] = attrs.Factory(dict)
    decaying: dict[str, int] = attrs.Factory(dict)
    conns: list[ConnModel] = attrs.Factory(list)

    @property
    def value(self) -> int:
        return sum(self.tags.values()) + sum(self.decaying.values())

    def sort_key(self) -> tuple[int, bool, bool, int, float, int]:
        """The default policy's order, from the model's own data."""
        streams = sum(conn.fake.num_streams for conn in self.conns)
        outbound = sum(1 for conn in self.conns if conn.fake.direction is Direction.OUTBOUND)
        return (self.value, streams > 0, outbound > 0, streams, -self.first_seen, -self.seq)


@attrs.define(eq=False)
class PlanModel:
    """What one trim should do, computed by the model at the moment the trim planned."""

    number: int
    at: float
    target: int
    eligible: set[str]
    victims: list[Victim]
    conns: set[ConnModel]
    exact: bool  # the victims' order is known (else only eligibility and counts are)
    closes: list[ConnModel] = attrs.Factory(list)
    closed: int = 0
    failed: int = 0
    candidates: set[str] = attrs.Factory(set)


class Model:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.peers: dict[str, PeerModel] = {}
        self.protections: dict[str, set[str]] = {}
        self.seq = 0
        self.ignored = 0
        self.closed_conns = 0
        self.close_failures = 0
        self.decay_failures = 0
        self.pending: list[ConnModel] = []  # `disconnected` reported by closes, not applied
        self.poisoned: set[str] = set()

    # entries

    def entry_for_tagging(self, peer: str, now: float) -> PeerModel:
        entry = self.peers.get(peer)
        if entry is None:
            self.seq += 1
            entry = self.peers[peer] = PeerModel(self.seq, now, temp=True)
        return entry

    def in_grace(self, entry: PeerModel, now: float) -> bool:
        return entry.first_seen > now - self.cfg.grace  # the manager's own expression

    def reap(self, now: float) -> None:
        for peer, entry in list(self.peers.items()):
            if entry.temp and not self.in_grace(entry, now):
                del self.peers[peer]

    # notifications, as the manager applies them

    def connected(self, conn: ConnModel, now: float) -> None:
        if conn.ended or conn.in_table:
            self.ignored += 1  # stale or duplicate
            return
        entry = self.peers.get(conn.peer)
        if entry is None:
            self.seq += 1
            entry = self.peers[conn.peer] = PeerModel(self.seq, now, temp=False)
        elif entry.temp:
            entry.temp = False
            entry.first_seen = now  # grace starts at the connection
        entry.conns.append(conn)
        conn.in_table = True

    def disconnected(self, conn: ConnModel) -> None:
        if conn.in_table:
            self.remove(conn)
        elif conn.unconfirmed:
            conn.unconfirmed = False  # the host confirming a close the manager made
        else:
            self.ignored += 1
            conn.ended = True

    def remove(self, conn: ConnModel) -> None:
        entry = self.peers[conn.peer]
        entry.conns.remove(conn)
        conn.in_table = False
        conn.ended = True
        if not entry.conns:
            del self.peers[conn.peer]  # its tags and decaying values go with it

    def apply_pending(self) -> None:
        pending, self.pending = self.pending, []
        for conn in pending:
            self.disconnected(conn)

    # trims

    def plan(self, number: int, at: float, *, exact: bool) -> PlanModel:
        self.apply_pending()  # a trim applies the queue first
        self.reap(at)  # and reaps stale temporary entries
        candidates = [
            entry
            for peer, entry in self.peers.items()
            if not entry.temp
            and entry.conns
            and peer not in self.protections
            and not self.in_grace(entry, at)
        ]
        eligible_conns = sum(len(entry.conns) for entry in candidates)
        target = eligible_conns - self.cfg.low
        victims: list[Victim] = []
        conns: set[ConnModel] = set()
        if target > 0:
            covered = 0
            for entry in sorted(candidates, key=PeerModel.sort_key):
                if covered >= target:
                    break
                victims.append(Victim(entry.conns[0].peer, entry.value, len(entry.conns)))
                conns.update(entry.conns)
                covered += len(entry.conns)
        eligible = {entry.conns[0].peer for entry in candidates}
        return PlanModel(number, at, max(target, 0), eligible, victims, conns, exact)

    def eligible_conns(self, now: float) -> list[ConnModel]:
        return [
            conn
            for peer, entry in self.peers.items()
            if not entry.temp and peer not in self.protections and not self.in_grace(entry, now)
            for conn in entry.conns
        ]


# --- the harness -------------------------------------------------------------------------------


class RecordingPolicy:
    """The default order, reporting every trim's candidates to the harness as it plans."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness
        self._default = DefaultPolicy()

    def sort_key(self, candidate: Candidate) -> Any:
        self._harness.on_candidate(candidate)
        return self._default.sort_key(candidate)


class Harness:
    def __init__(self, cfg: Config, tg: anyio.abc.TaskGroup) -> None:
        self.cfg = cfg
        self.tg = tg
        self.clock = FakeClock()
        self.model = Model(cfg)
        self.errors: list[str] = []
        self.manager = ConnManager(
            bounded_count=False,  # the model is the reference's: grace protects every newcomer
            low_water=cfg.low,
            high_water=cfg.high,
            grace_period=cfg.grace,
            silence_period=cfg.silence,
            close_timeout=CLOSE_TIMEOUT,
            close_concurrency=cfg.concurrency,
            decay_resolution=DECAY_RESOLUTION,
            clock=self.clock,
            policy=RecordingPolicy(self) if cfg.recording_policy else None,
        )
        self.notifiee = self.manager.notifee()
        self.conns: list[ConnModel] = []
        self.plans: dict[int, PlanModel] = {}
        self.step_plans: list[PlanModel] = []
        self.trims_running = 0
        self.dtags: dict[str, DecayingTag] = {}
        # Trims (by number) during which a decay visit ran: values may have changed after
        # the trim planned.
        self.visited_during: set[int] = set()

    # checks made inside the manager's callbacks cannot raise there (the manager would count
    # the error as a failed close or decay): they are collected and asserted after each step

    @contextmanager
    def checking(self, where: str) -> Iterator[None]:
        try:
            yield
        except AssertionError as exc:
            self.errors.append(f"{where}: {exc}")

    def now(self) -> float:
        return self.clock.now()

    # -- setup --------------------------------------------------------------------------------

    def register_decaying_tags(self) -> None:
        model = self.model

        def bump(value: DecayingValue, delta: int) -> int:
            if delta == POISON_DELTA:
                raise Boom("a bump function that raises")
            return value.value + delta

        def decay_counting_down(value: DecayingValue) -> tuple[int, bool]:
            self.check_visit("dk", value)
            if value.peer in model.poisoned:
                model.decay_failures += 1
                raise Boom("a decay function that raises")
            after = value.value - 1
            entry = model.peers.get(str(value.peer))
            if entry is not None:  # else check_visit has recorded the error
                if after <= 0:
                    entry.decaying.pop("dk", None)
                else:
                    entry.decaying["dk"] = after
            return after, after <= 0

        def decay_calling_back(value: DecayingValue) -> tuple[int, bool]:
            self.check_visit("dn", value)
            # A decay function may call back into the manager.
            peer = str(value.peer)
            self.manager.tag_peer(peer, "from-decay", value.value)
            model.entry_for_tagging(peer, self.now()).tags["from-decay"] = value.value
            return value.value, False

        self.dtags["dk"] = self.manager.register_decaying_tag("dk", 2, decay_counting_down, bump)
        self.dtags["dn"] = self.manager.register_decaying_tag("dn", 5, decay_calling_back, bump)

    def check_visit(self, tag: str, value: DecayingValue) -> None:
        self.visited_during.add(self.manager.get_info().trims)
        with self.checking(f"decay visit of {tag} for {value.peer}"):
            entry = self.model.peers.get(str(value.peer))
            assert entry is not None, "a value of a peer the manager should not know"
            assert entry.decaying.get(tag) == value.value, (entry.decaying, value)
            assert value.last_visit == self.now()

    # -- the hooks --------------------------------------------------------------------------

    def on_candidate(self, candidate: Candidate) -> None:
        """Called by the recording policy for every candidate of a trim, as it plans."""
        info = self.manager.get_info()
        number = info.trims
        plan = self.plans.get(number)
        if plan is None:
            assert info.last_trim is not None
            plan = self.new_plan(number, info.last_trim, exact=True)
        peer = str(candidate.peer)
        plan.candidates.add(peer)
        with self.checking(f"trim {number} candidate {peer}"):
            assert peer in plan.eligible, f"{peer} is not eligible"
            entry = self.model.peers.get(peer)
            assert entry is not None
            assert (candidate.value, candidate.seq, candidate.first_seen) == (
                entry.value,
                entry.seq,
                entry.first_seen,
            )

    def new_plan(self, number: int, at: float, *, exact: bool) -> PlanModel:
        plan = self.plans[number] = self.model.plan(number, at, exact=exact)
        self.step_plans.append(plan)
        return plan

    def close_hook(self, conn: ConnModel) -> Callable[[FakeConn], Any]:
        async def close(fake: FakeConn) -> None:
            self.on_close(conn)
            outcome = self.outcome(conn)
            if outcome in ("report", "report_raise"):
                self.notifiee.disconnected(fake)
                self.model.pending.append(conn)
            if outcome in ("ok", "report"):
                if conn.in_table:  # else on_close has recorded the error
                    self.model.remove(conn)
                conn.unconfirmed = True
                conn.closed_ok = True
                self.model.closed_conns += 1
                self.plans[self.manager.get_info().trims].closed += 1
                return
            self.model.close_failures += 1
            self.plans[self.manager.get_info().trims].failed += 1
            if outcome == "hang":
                await anyio.sleep_forever()
            raise Boom(f"close of {conn.peer} fails")

        return close

    def outcome(self, conn: ConnModel) -> str:
        first = conn.attempts == 1
        behaviour = conn.behaviour
        if behaviour == "raise_once":
            return "raise" if first else "ok"
        if behaviour == "hang_once":
            return "hang" if first else "ok"
        if behaviour == "raise_always":
            return "raise"
        return behaviour

    def on_close(self, conn: ConnModel) -> None:
        info = self.manager.get_info()
        number = info.trims  # single flight: the trim in flight is the latest one
        plan = self.plans.get(number)
        if plan is None:
            # The default policy reports nothing while planning: the model plans now. Only a
            # decay visit since the trim started could have changed anything (values): if
            # one did, eligibility and counts are still checked exactly, but not the order.
            assert info.last_trim is not None
            exact = number not in self.visited_during
            plan = self.new_plan(number, info.last_trim, exact=exact)
        conn.attempts += 1
        plan.closes.append(conn)
        with self.checking(f"trim {number} closes {conn.peer}"):
            assert not conn.fake.closed, "closed twice"
            assert not conn.closed_ok, "closed twice"
            assert conn.in_table, "closed a connection the manager should not hold"
            assert conn.peer not in self.model.protections, "closed a protected peer"
            entry = self.model.peers[conn.peer]
            assert not self.model.in_grace(entry, plan.at), "closed a peer in its grace period"
            assert conn.peer in plan.eligible
            if plan.exact:
                assert conn in plan.conns, "not chosen in policy order"

    # -- running -------------------------------------------------------------------------------

    async def quiesce(self) -> None:
        """Lets everything run; closes that hang are cut by moving the clock."""
        for _ in range(100):
            await settle()
            if self.trims_running or self.manager.get_info().closing_count:
                self.clock.advance(CLOSE_TIMEOUT)
                continue
            return
        raise AssertionError("the manager never settled")

    def conn_at(self, index: int) -> ConnModel | None:
        return self.conns[index % len(self.conns)] if self.conns else None

    def new_conn(
        self, peer: str, *, outbound: bool, streams: int, behaviour: Behaviour
    ) -> ConnModel:
        direction = Direction.OUTBOUND if outbound else Direction.INBOUND
        fake = FakeConn(peer, direction=direction, num_streams=streams)
        conn = ConnModel(fake, peer, behaviour)
        fake.on_close = self.close_hook(conn)
        self.conns.append(conn)
        return conn

    async def step(self, op: Op) -> None:
        model = self.model
        manager = self.manager
        now = self.now()
        self.step_plans = []
        if isinstance(op, Connect):
            conn = self.new_conn(
                op.peer, outbound=op.outbound, streams=op.streams, behaviour=op.behaviour
            )
            self.notifiee.connected(conn.fake)
            model.connected(conn, now)
        elif isinstance(op, ConnectMany):
            for each in op.conns:
                conn = self.new_conn(
                    each.peer,
                    outbound=each.outbound,
                    streams=each.streams,
                    behaviour=each.behaviour,
                )
                self.notifiee.connected(conn.fake)
                model.connected(conn, now)
        elif isinstance(op, DisconnectFirst):
            conn = self.new_conn(op.peer, outbound=False, streams=0, behaviour="ok")
            self.notifiee.disconnected(conn.fake)
            model.disconnected(conn)
        elif isinstance(op, Disconnect):
            if (conn_or_none := self.conn_at(op.index)) is not None:
                self.notifiee.disconnected(conn_or_none.fake)
                model.disconnected(conn_or_none)
        elif isinstance(op, Reconnect):
            if (conn_or_none := self.conn_at(op.index)) is not None:
                self.notifiee.connected(conn_or_none.fake)
                model.connected(conn_or_none, now)
        elif isinstance(op, SetStreams):
            if (conn_or_none := self.conn_at(op.index)) is not None:
                conn_or_none.fake.num_streams = op.streams
        elif isinstance(op, Tag):
            manager.tag_peer(op.peer, op.tag, op.value)
            model.entry_for_tagging(op.peer, now).tags[op.tag] = op.value
        elif isinstance(op, Untag):
            manager.untag_peer(op.peer, op.tag)
            if (entry := model.peers.get(op.peer)) is not None:
                entry.tags.pop(op.tag, None)
        elif isinstance(op, Upsert):
            self.upsert(op, now)
        elif isinstance(op, Protect):
            manager.protect(op.peer, op.tag)
            model.protections.setdefault(op.peer, set()).add(op.tag)
        elif isinstance(op, Unprotect):
            still = manager.unprotect(op.peer, op.tag)
            tags = model.protections.get(op.peer)
            if tags is not None:
                tags.discard(op.tag)
                if not tags:
                    del model.protections[op.peer]
            assert still == (op.peer in model.protections)
        elif isinstance(op, Bump):
            self.bump(op, now)
        elif isinstance(op, PoisonDecay):
            model.poisoned ^= {op.peer}
        elif isinstance(op, Advance):
            self.clock.advance(op.seconds)
        elif isinstance(op, Trim):
            await self.explicit_trim(now)
        await self.quiesce()
        self.check()

    def upsert(self, op: Upsert, now: float) -> None:
        model = self.model
        entry = model.peers.get(op.peer)
        current = entry.tags.get(op.tag, 0) if entry is not None else 0
        if op.mode == "raise":

            def explode(value: int) -> int:
                raise Boom("an upsert function that raises")

            with pytest.raises(Boom):
                self.manager.upsert_tag(op.peer, op.tag, explode)
            return
        if op.mode == "reenter":

            def reenter(value: int) -> int:
                # Calls back into the manager: tags the same peer and protects it.
                assert value == current
                self.manager.tag_peer(op.peer, "reentered", value)
                model.entry_for_tagging(op.peer, now).tags["reentered"] = value
                self.manager.protect(op.peer, "b")
                model.protections.setdefault(op.peer, set()).add("b")
                return value + op.delta

            self.manager.upsert_tag(op.peer, op.tag, reenter)
        else:
            self.manager.upsert_tag(op.peer, op.tag, lambda value: value + op.delta)
        model.entry_for_tagging(op.peer, now).tags[op.tag] = current + op.delta

    def bump(self, op: Bump, now: float) -> None:
        tag = self.dtags[op.tag]
        if op.delta == POISON_DELTA:
            with pytest.raises(Boom):
                tag.bump(op.peer, op.delta)
            return
        tag.bump(op.peer, op.delta)
        entry = self.model.entry_for_tagging(op.peer, now)
        entry.decaying[op.tag] = entry.decaying.get(op.tag, 0) + op.delta

    async def explicit_trim(self, now: float) -> None:
        results: list[TrimResult] = []
        plan: PlanModel | None = None
        if not self.cfg.trimming_disabled:
            # Nothing runs between here and the trim's own plan: the model plans it now.
            plan = self.new_plan(self.manager.get_info().trims + 1, now, exact=True)

        async def trim() -> None:
            self.trims_running += 1
            try:
                results.append(await self.manager.trim_open_conns())
            finally:
                self.trims_running -= 1

        self.tg.start_soon(trim)
        await self.quiesce()
        (result,) = results
        if plan is None:
            assert result == TrimResult(), "a trim ran although trimming is disabled"
            return
        assert result.started_at == plan.at
        assert result.target == plan.target
        assert [(v.peer, v.value, v.conns) for v in result.victims] == [
            (v.peer, v.value, v.conns) for v in plan.victims
        ]
        assert (result.closed, result.failed) == (plan.closed, plan.failed)
        assert not result.cut_short

    # -- the checks after every step ------------------------------------------------------

    def check(self) -> None:
        model = self.model
        manager = self.manager
        now = self.now()
        model.apply_pending()
        model.reap(now)
        assert not self.errors, self.errors
        manager._check_invariants()

        for plan in self.step_plans:
            closed_here = set(plan.closes)
            assert len(closed_here) == len(plan.closes), f"trim {plan.number} closed twice"
            assert (plan.closed + plan.failed) == len(plan.closes)
            if plan.exact:
                assert closed_here == plan.conns, f"trim {plan.number}: not the planned victims"
            else:
                # Whole peers, and the shortest prefix of some order covering the target.
                assert len(closed_here) >= plan.target
                by_peer: dict[str, int] = {}
                for conn in closed_here:
                    by_peer[conn.peer] = by_peer.get(conn.peer, 0) + 1
                if by_peer:  # without its last victim, the prefix falls short
                    assert len(closed_here) - max(by_peer.values()) < plan.target
            if self.cfg.recording_policy and plan.target > 0:
                assert plan.candidates == plan.eligible, f"trim {plan.number} candidates"

        info = manager.get_info()
        real = {peer: entry for peer, entry in model.peers.items() if not entry.temp}
        assert info.closing_count == 0
        assert info.queued_notifications == 0
        assert info.conn_count == sum(len(entry.conns) for entry in real.values())
        assert info.peer_count == len(real)
        assert info.temporary_count == len(model.peers) - len(real)
        assert info.protected_count == len(model.protections)
        assert info.ignored_notifications == model.ignored
        assert info.closed_conns == model.closed_conns
        assert info.close_failures == model.close_failures
        assert info.decay_failures == model.decay_failures
        assert all(count == 0 for count in info.loop_failures.values()), info.loop_failures
        for peer in PEERS:
            tag_info = manager.get_tag_info(peer)
            entry = model.peers.get(peer)
            if entry is None:
                assert tag_info is None, peer
            else:
                assert tag_info is not None, peer
                expected = dict(entry.tags)
                for name, value in entry.decaying.items():
                    expected[name] = expected.get(name, 0) + value
                assert dict(tag_info.tags) == expected, peer
                assert tag_info.value == entry.value, peer
                assert tag_info.temporary == entry.temp, peer
                assert tag_info.first_seen == entry.first_seen, peer
                assert set(tag_info.conns) == {conn.fake for conn in entry.conns}, peer
            for tag in PROTECTIONS:
                assert manager.is_protected(peer, tag) == (tag in model.protections.get(peer, ()))

    async def check_trimmer_caught_up(self) -> None:
        """Once grace and silence have passed, the trimmer has done its work."""
        for _ in range(3):
            self.step_plans = []
            self.clock.advance(max(self.cfg.grace, self.cfg.silence) + 1)
            await self.quiesce()
            self.check()
        if self.cfg.trimming_disabled:
            return
        if self.manager.get_info().conn_count > self.cfg.high:
            eligible = self.model.eligible_conns(self.now())
            failing = [conn for conn in eligible if conn.behaviour == "raise_always"]
            assert len(eligible) - len(failing) <= self.cfg.low, "the trimmer fell behind"


async def run_model(cfg: Config, ops: list[Op]) -> None:
    before = task_ids()
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            harness = Harness(cfg, tg)
            manager = harness.manager
            try:
                async with manager:
                    harness.register_decaying_tags()
                    await harness.quiesce()
                    for op in ops:
                        await harness.step(op)
                    await harness.check_trimmer_caught_up()
                    await manager.aclose()
            except BaseException:
                harness.clock.advance(1e6)  # let hung closes go, so the failure surfaces
                raise
    assert task_ids() == before, "a task was left behind"
    info = manager.get_info()
    assert info.closed
    assert not info.running
    with pytest.raises(ManagerClosedError):
        await manager.trim_open_conns()
    manager.notifee().connected(FakeConn("late"))  # counted, never raised
    assert manager.get_info().ignored_notifications == harness.model.ignored + 1
    manager._check_invariants()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@MODEL_SETTINGS
@given(cfg=configs(), ops=st.lists(OPS, min_size=25, max_size=80))
def test_manager_matches_model(backend: str, cfg: Config, ops: list[Op]) -> None:
    anyio.run(run_model, cfg, ops, backend=backend)
